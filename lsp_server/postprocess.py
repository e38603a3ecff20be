"""From the model's raw text to the edit the editor shows: a pipeline of plain functions on strings.

`postprocess` applies them in order; each one is usable (and tested) on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

BLOCK_OPENERS = (":", "{", "(", "[")
CLOSERS = ("}", ")", "]")
PAIRS = {")": "(", "]": "[", "}": "{"}
BRACKET_SCAN_CHARS = 4000   # of the text before the cursor, for the brackets still open there


@dataclass(frozen=True)
class Edit:
    text: str
    replaces_line_suffix: bool = False   # True: `text` replaces the rest of the cursor's line (it contains it)


def postprocess(raw: str, line_prefix: str, line_suffix: str, following: str, multiline: bool,
                prefix: str | None = None) -> Edit | None:
    """`following` is the document after the cursor's line; `prefix` all of it before the cursor
    (default: the cursor's line), for the brackets still open there. None when nothing useful is left."""
    text = cut_at_control_character(raw)
    text = cut_at_block_end(text, line_prefix) if multiline else first_line(text)
    open_brackets = unclosed_brackets(line_prefix if prefix is None else prefix)
    if open_brackets is not None:
        text = cut_at_unmatched_closer(text, open_brackets)
    text = trim_trailing_whitespace(text)
    text = drop_doubled_space(text, line_prefix)
    text = drop_doubled_word(text, line_prefix)
    text = cut_repeated_lines(text, following)
    if not text.strip() or repeats_what_follows(text, line_suffix + "\n" + following):
        return None
    if duplicates_next_line(text, line_prefix, line_suffix, following):
        return None
    edit = fit_line_suffix(text, line_suffix)
    return edit if edit.text.strip() else None


def cut_at_control_character(text: str) -> str:
    """Source code has no control characters but tab and newline (and carriage return): from the
    first other one on, the model is writing garbage."""
    for i, char in enumerate(text):
        if (char < " " and char not in "\t\n\r") or char in "\x7f\ufffd":
            return text[:i]
    return text


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def block_end(text: str, line_prefix: str) -> int | None:
    """Index in `text` where the block the cursor is in ends (a later line dedents), or None."""
    base = indent_of(line_prefix) if line_prefix.strip() else len(line_prefix)
    lines = text.split("\n")
    opens = (line_prefix + lines[0]).rstrip().endswith(BLOCK_OPENERS)
    offset = len(lines[0]) + 1
    for line in lines[1:]:
        if line.strip():  # a line's indentation is known once its first visible character is
            indent = indent_of(line)
            if opens and indent <= base:
                # A closing bracket at the opener's indentation belongs to the block; stop after it.
                closes = indent == base and line.lstrip().startswith(CLOSERS)
                return offset + len(line) if closes else offset
            if not opens and indent < base:
                return offset
        offset += len(line) + 1
    return None


def cut_at_block_end(text: str, line_prefix: str) -> str:
    end = block_end(text, line_prefix)
    return text if end is None else text[:end]


def trim_trailing_whitespace(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def drop_doubled_space(text: str, line_prefix: str) -> str:
    """The cursor already follows a space (`x = |`): a completion starting with one would double it."""
    if line_prefix.strip() and line_prefix.endswith((" ", "\t")) and text.startswith(" "):
        return text[1:]
    return text


def drop_doubled_word(text: str, line_prefix: str) -> str:
    """`return |` completed with `return f(x)`: the model restarted the statement; keep the rest."""
    words = line_prefix.split()
    if not words or not line_prefix.endswith(" ") or not words[-1].isidentifier() or len(words[-1]) < 3:
        return text
    word = words[-1]
    if text.startswith(word) and text[len(word):len(word) + 1] in (" ", ""):
        return text[len(word):].lstrip(" ")
    return text


def cut_repeated_lines(text: str, following: str) -> str:
    """Stop where the completion starts writing the next existing line again."""
    next_line = next_line_of(following)
    if len(next_line) < 3:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        if lines[i].strip() == next_line:
            return trim_trailing_whitespace("\n".join(lines[:i]))
    return text


def next_line_of(following: str) -> str:
    return next((line.strip() for line in following.split("\n") if line.strip()), "")


def duplicates_next_line(text: str, line_prefix: str, line_suffix: str, following: str) -> bool:
    """The cursor's line, completed, would equal the line below it (typing `fo` above
    `for line in lines:` offered `r line in lines:`)."""
    below = next_line_of(following)
    completed = (line_prefix + first_line(text) + ("" if "\n" in text else line_suffix)).strip()
    return len(below) >= 3 and completed == below


def unclosed_brackets(prefix: str) -> str | None:
    """The brackets open at the end of `prefix`, innermost last, skipping strings and comments
    (Python and C-like); None when the cursor is inside a string, where brackets mean nothing."""
    start = prefix.find("\n", max(0, len(prefix) - BRACKET_SCAN_CHARS)) + 1 if len(prefix) > BRACKET_SCAN_CHARS else 0
    text, stack, i, quote = prefix[start:], [], 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
            if c == "\n" and len(quote) == 1:
                quote = ""   # an unterminated one-line string ends with its line
        elif c in "\"'`":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            i += len(quote)
            continue
        elif c == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end == -1 else end
            continue
        elif c in "([{":
            stack.append(c)
        elif c in PAIRS:
            if stack and stack[-1] == PAIRS[c]:
                stack.pop()
            else:
                stack = []  # unbalanced before the cursor: start counting afresh
        i += 1
    return None if quote else "".join(stack)


def cut_at_unmatched_closer(text: str, open_brackets: str) -> str:
    """Cut before the first closing bracket that closes nothing the cursor's code opened: the
    model is finishing a call that is not there (or the one the editor already closed twice)."""
    stack, quote = list(open_brackets), ""
    for i, c in enumerate(text):
        if quote:
            if c == quote or c == "\n":
                quote = ""
            continue
        if c in "\"'":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in PAIRS:
            if not stack or stack[-1] != PAIRS[c]:
                return text[:i]
            stack.pop()
    return text


def repeats_what_follows(text: str, after_cursor: str) -> bool:
    """The completion only types what is already there (whitespace aside)."""
    words = text.split()
    following = after_cursor[:len(text) * 4 + 200].split()
    return bool(words) and " ".join(following).startswith(" ".join(words))


def fit_line_suffix(text: str, line_suffix: str) -> Edit:
    """Never duplicate the rest of the line: an edit that already contains it replaces it, one that
    ends with it drops it, and a multi-line edit that ignores it shrinks to its first line."""
    rest = line_suffix.strip()
    if not rest:
        return Edit(text)
    head = first_line(text)
    stripped = head.rstrip()
    if "\n" not in text and stripped.endswith(rest):
        inserted = stripped[:-len(rest)]
        return Edit(inserted.rstrip() if line_suffix[:1].isspace() else inserted)
    if _is_subsequence(rest, head):
        return Edit(text, replaces_line_suffix=True)
    return Edit(head)


def _is_subsequence(needle: str, haystack: str) -> bool:
    chars = iter(haystack)
    return all(c in chars for c in needle)
