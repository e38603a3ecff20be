"""Where the cursor is: the document split into text before and after it, from an LSP position.

LSP positions count UTF-16 code units unless client and server agreed on another encoding; Python
strings count code points. A character outside the Basic Multilingual Plane (most emoji) is one code
point but two UTF-16 units (and four UTF-8 bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

# Beyond these the server answers nothing rather than tokenising megabytes on every keystroke.
MAX_DOCUMENT_CHARS = 2_000_000
MAX_LINE_CHARS = 10_000


class BadPosition(ValueError):
    """The position is not in the document (line past the end)."""


@dataclass(frozen=True)
class Cursor:
    prefix: str          # document text before the cursor
    suffix: str          # document text after the cursor
    line: int
    character: int       # column of the cursor in position-encoding units, clamped to the line's end
    line_end: int        # column of the end of the cursor's line (before its newline)

    @property
    def line_prefix(self) -> str:
        return self.prefix[self.prefix.rfind("\n") + 1:]

    @property
    def line_suffix(self) -> str:
        end = self.suffix.find("\n")
        return self.suffix if end == -1 else self.suffix[:end]


def units_of(char: str, encoding: str = "utf-16") -> int:
    if encoding == "utf-32":
        return 1
    if encoding == "utf-8":
        return len(char.encode("utf-8", errors="replace"))
    return 2 if ord(char) > 0xFFFF else 1


def utf16_length(text: str, encoding: str = "utf-16") -> int:
    """Length of `text` in the position encoding's units (UTF-16 code units by default)."""
    return sum(units_of(c, encoding) for c in text)


def index_from_utf16(line: str, column: int, encoding: str = "utf-16") -> int:
    """The code-point index of a column; past the end clamps, inside a character rounds down."""
    units = 0
    for index, char in enumerate(line):
        units += units_of(char, encoding)
        if units > column:
            return index
    return len(line)


def split_at(source: str, line: int, character: int, encoding: str = "utf-16") -> Cursor:
    """The document split at an LSP position. A column past the line's end means its end."""
    if line < 0 or character < 0:
        raise BadPosition(f"negative position {line}:{character}")
    lines = source.split("\n")  # "\r\n" keeps its "\r" at the line end, which the column never passes
    if line >= len(lines):
        raise BadPosition(f"line {line} is past the end of the document ({len(lines)} lines)")
    text = lines[line].removesuffix("\r")
    index = index_from_utf16(text, character, encoding)
    offset = sum(len(t) + 1 for t in lines[:line]) + index
    return Cursor(source[:offset], source[offset:], line, utf16_length(text[:index], encoding),
                  utf16_length(text, encoding))


def looks_binary(source: str) -> bool:
    """NUL characters do not occur in source code; a document with them is data, not code."""
    return "\x00" in source[:65536]


def clean_text(text: str) -> str:
    """Replace lone UTF-16 surrogates (invalid in JSON strings that reach us) so the tokenizer can encode."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
