"""Where the user will be after accepting a suggestion, so the next one can be computed ahead.

A block (multi-line) suggestion continues where it ends. A one-line suggestion that finishes its
line continues on the next line, after the Enter the user presses and the indentation the editor
adds (one level more after a line that opens a block); when the guess is wrong, the next request
simply generates. A suggestion that leaves code after it on the line is not followed.
"""
from __future__ import annotations

from .completer import Suggestion
from .documents import Cursor
from .postprocess import BLOCK_OPENERS, indent_of

INDENT = "    "


def after_accepting(cursor: Cursor, suggestion: Suggestion) -> Cursor | None:
    edit = suggestion.edit
    rest_of_line = "" if edit.replaces_line_suffix else cursor.line_suffix
    suffix = cursor.suffix[len(cursor.line_suffix):]  # the document after the cursor's line
    if suggestion.multiline:
        prefix = cursor.prefix + edit.text
        return _cursor(prefix, rest_of_line + suffix)
    if rest_of_line.strip():
        return None
    line = cursor.line_prefix + edit.text
    indent = line[:indent_of(line)]
    if line.rstrip().endswith(BLOCK_OPENERS):
        indent += "\t" if indent.startswith("\t") else INDENT
    return _cursor(cursor.prefix + edit.text + "\n" + indent, suffix)


def _cursor(prefix: str, suffix: str) -> Cursor:
    """A cursor for the pipeline, which reads only the texts (the LSP position is not needed)."""
    line_start = prefix.rfind("\n") + 1
    line_prefix = prefix[line_start:]
    line_end = suffix.find("\n")
    line_suffix = suffix if line_end == -1 else suffix[:line_end]
    return Cursor(prefix, suffix, prefix.count("\n"), len(line_prefix), len(line_prefix) + len(line_suffix))
