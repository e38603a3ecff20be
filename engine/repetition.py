"""Stopping a completion that loops, while it streams: pure functions on strings.

A small model decoding greedily falls into cycles: the same line again and again, a block of a few
lines again, a word again within a line, or the line that already follows the cursor. The guard
sees the text as it grows, together with the last lines of the prompt and the next line of the
document, and answers two things: where to cut and stop (a repeat is complete), and how much may
be sent now (text that so far only copies the block before it is held back until it either
completes the repeat, and is cut, or turns into something new, and is sent).

`has_loop` is the same notion as a yes/no for a finished text: what the tests and benchmarks count.

The guard runs once a token, so it remembers what does not change while the text only grows: the
line starts before each line (they depend on the text before it), and the checks of complete lines
(they can only change when a newline comes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

CONTEXT_LINES = 16       # prompt lines the guard compares with (a repeat of the line above is a loop too)
MAX_BLOCK_LINES = 8      # longest block whose immediate repeat is a loop
MIN_UNIT_CHARS = 4       # within a line: a repeated unit this long or longer, with a letter in it,
UNIT_REPEATS = 4         # ... this many times in a row;
SYMBOL_UNIT_REPEATS = 8  # a shorter one or one without letters (`0 0 0`, `[0, 0, ...`) this many times
MAX_UNIT_CHARS = 40


@dataclass
class RepetitionGuard:
    """`prompt` is the text before the cursor; `suffix` the text after it (None: none given)."""
    context: str
    next_line: str
    # What the last check saw: its text, the cut the checks of complete lines gave it, and the
    # earlier line starts of each line start (all valid while the text only grows).
    _seen: str = field(default="", init=False, repr=False, compare=False)
    _lines_cut: int | None = field(default=None, init=False, repr=False, compare=False)
    _earlier: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def for_prompt(cls, prompt: str, suffix: str | None) -> "RepetitionGuard":
        lines = prompt[-4000:].split("\n")
        context = "\n".join(lines[-CONTEXT_LINES:])
        return cls(context, next_existing_line(suffix or ""))

    def check(self, text: str, finished: bool = False) -> tuple[int | None, int]:
        """(cut, safe): `cut` is where the completion should end now (None: go on); `safe` how many
        characters of `text` may be sent. `finished`: the model stopped, so the last line is
        complete (a repeat it ends is cut; one it only began is text like any other)."""
        full = self.context + text
        offset = len(self.context)
        starts = _line_starts(full, offset)
        grown = text.startswith(self._seen)
        if not grown:
            self._earlier.clear()
        earlier = self._earlier_starts(full)
        if grown and not finished and self._lines_cut is None and "\n" not in text[len(self._seen):]:
            cut = None  # no line was completed since the last check, which found nothing
        else:
            cut = self._duplicate_of_next_line(full, offset, starts, finished)
            if cut is None:
                # Finished, the last line is complete: a copy it ends counts, one it only began does not.
                cut = _repeated_block(full, offset, starts, complete_only=not finished, earlier=earlier)
        if not finished:
            self._seen, self._lines_cut = text, cut
        if cut is None:
            cut = _repeated_unit(full, offset, starts[-1])
        if cut is not None:
            return cut - offset, cut - offset
        if finished:
            return None, len(text)
        hold = min(_copy_in_progress(full, offset, starts, earlier), _unit_in_progress(full, offset, starts[-1]),
                   self._next_line_in_progress(full, offset, starts))
        return None, hold - offset

    def _earlier_starts(self, full: str):
        def earlier(before: int) -> list[int]:
            found = self._earlier.get(before)
            if found is None:
                found = self._earlier[before] = _earlier_starts(full, before, MAX_BLOCK_LINES)
            return found
        return earlier

    def _duplicate_of_next_line(self, full: str, offset: int, starts: list[int], finished: bool) -> int | None:
        """Cut before a completed line that equals the document's next line."""
        if len(self.next_line) < 3:
            return None
        for i, start in enumerate(starts):
            end = full.find("\n", start)
            if end == -1 and not finished:
                break
            line = full[start:] if end == -1 else full[start:end]
            if line.strip() == self.next_line:
                first = max(start, offset)
                return first - 1 if first > offset and full[first - 1] == "\n" else first
        return None

    def _next_line_in_progress(self, full: str, offset: int, starts: list[int]) -> int:
        if len(self.next_line) < 3:
            return len(full)
        start = starts[-1]
        line = full[start:].lstrip()
        if line and self.next_line.startswith(line):
            return max(offset, start - 1 if start > offset else start)
        return len(full)


def next_existing_line(suffix: str) -> str:
    """The first non-blank line after the rest of the cursor's line, stripped."""
    end = suffix.find("\n")
    if end == -1:
        return ""
    for line in suffix[end + 1:end + 1 + 4000].split("\n"):
        if line.strip():
            return line.strip()
    return ""


def has_loop(text: str, context: str = "") -> bool:
    """Whether a finished completion repeats a block of lines, a unit within a line, or a line of
    `context` (the prompt's last lines) right before it."""
    full = context + text
    offset = len(context)
    starts = _line_starts(full, offset)
    if _repeated_block(full, offset, starts, complete_only=False) is not None:
        return True
    return any(_repeated_unit(full, offset, s) is not None for s in starts)


def _line_starts(full: str, offset: int) -> list[int]:
    """Starts of the cursor's line and of every line after it (the generated ones)."""
    first = full.rfind("\n", 0, offset) + 1
    starts = [first]
    at = full.find("\n", offset)
    while at != -1:
        starts.append(at + 1)
        at = full.find("\n", at + 1)
    return starts


def _earlier_starts(full: str, before: int, n: int) -> list[int]:
    """Up to n line starts before `before`, nearest first."""
    found, at = [], before - 1
    while len(found) < n and at > 0:
        at = full.rfind("\n", 0, at)
        if at == -1:
            found.append(0)
            break
        found.append(at + 1)
    return found


def _repeated_block(full: str, offset: int, starts: list[int], complete_only: bool = True,
                    earlier: Callable[[int], list[int]] | None = None) -> int | None:
    """Where a generated copy of the block of lines right before it begins, once the copy is
    complete (its last line ended by a newline; with complete_only=False also at the end).
    `earlier(s)`: the line starts before s (_earlier_starts), when the caller keeps them."""
    for s2 in starts:
        for s1 in earlier(s2) if earlier else _earlier_starts(full, s2, MAX_BLOCK_LINES):
            block = full[s1:s2]
            if not block.strip():
                continue
            copy = full[s2:s2 + len(block)]
            if copy == block or (not complete_only and s2 + len(block) > len(full)
                                 and block.rstrip("\n") == full[s2:].rstrip("\n") and full[s2:].strip()):
                cut = s2 - 1 if s2 - 1 >= offset else s2
                return max(cut, offset)
    return None


def _copy_in_progress(full: str, offset: int, starts: list[int], earlier: Callable[[int], list[int]]) -> int:
    """The earliest generated line start from which the text so far copies the block before it."""
    for s2 in starts:
        tail = full[s2:]
        for s1 in earlier(s2):
            # block = full[s1:s2], not blank, longer than the tail and starting with it
            if len(tail) < s2 - s1 and full.startswith(tail, s1, s2) and full[s1:s2].strip():
                return max(offset, s2 - 1)
    return len(full)


def _repeated_unit(full: str, offset: int, line_start: int) -> int | None:
    """Within the line from `line_start`: where the second copy of a unit repeated UNIT_REPEATS
    times in a row begins (the repeat must be generated text)."""
    end = full.find("\n", line_start)
    line_end = len(full) if end == -1 else end
    line = full[line_start:line_end]
    no_letter = _letterless_tail(line)
    for period in _doubled_periods(line):
        worded = period >= MIN_UNIT_CHARS and period > no_letter  # the unit line[-period:] has a letter
        repeats = UNIT_REPEATS if worded else SYMBOL_UNIT_REPEATS
        span = period * repeats
        if span > len(line):
            continue
        tail = line[-span:]
        unit = tail[:period]
        if unit.strip() and tail == unit * repeats:
            second = line_end - span + period
            if second > offset:
                return second
    return None


def _letterless_tail(line: str) -> int:
    """How many of the line's last characters (up to MAX_UNIT_CHARS) hold no letter."""
    for i in range(1, min(len(line), MAX_UNIT_CHARS) + 1):
        if line[-i].isalpha():
            return i - 1
    return MAX_UNIT_CHARS


def _unit_in_progress(full: str, offset: int, line_start: int) -> int:
    """Hold back the line's tail once a unit repeats twice, until it either repeats on or stops."""
    line = full[line_start:]
    n = len(line)
    best = len(full)
    for period in _doubled_periods(line):
        unit = line[n - period:]
        if not unit.strip():
            continue
        reps = 2
        while reps * period + period <= n and line[n - (reps + 1) * period:n - reps * period] == unit:
            reps += 1
        best = min(best, max(offset, len(full) - (reps - 1) * period))
    return best


def _doubled_periods(line: str) -> list[int]:
    """The periods (2 to MAX_UNIT_CHARS, ascending) whose last two copies end the line: every
    repeated unit has them. Only periods at which the last character recurs are compared."""
    n = len(line)
    top = min(MAX_UNIT_CHARS, n // 2)
    found: list[int] = []
    if top < 2:
        return found
    last, lowest = line[-1], n - 1 - top
    at = line.rfind(last, lowest, n - 2)   # period n - 1 - at, from 2 up
    while at != -1:
        period = n - 1 - at
        if line[n - period:] == line[n - 2 * period:n - period]:
            found.append(period)
        at = line.rfind(last, lowest, at)
    return found
