"""What the editor sends the engine: the text before and after the cursor, and snippets from other
files as the engine's `ContextFile` (the one shape neighbouring-file context has from here on).

The engine decides what fits its context window and how the family lays it out (engine/prompt.py);
this side only bounds what travels, by characters, generously above any window: the prefix keeps
its last lines, starting on a multiple of `PREFIX_STRIDE_LINES` so that while the user types,
successive prompts start with the same text and the engine's prefix reuse keeps applying.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable

from engine.inputs import ContextFile

PREFIX_STRIDE_LINES = 8
# Characters sent per prompt token the engine may use: code averages 3-4 characters a token, so
# the engine trims; what it trims still feeds its cache model, which is why at least MIN_CHARS go
# (the names defined a few hundred lines up).
CHARS_PER_TOKEN = 8
MIN_CHARS = 12_000
QUERY_LINES = 30             # lines before the cursor whose identifiers select neighbour snippets
WINDOW_LINES = 20            # size of a candidate snippet in a neighbouring file
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclass(frozen=True)
class Prompt:
    prefix: str                      # text before the cursor (its far start cut off)
    suffix: str                      # text after the cursor (its far end cut off)
    files: tuple[ContextFile, ...] = ()  # neighbour snippets, best first
    path: str | None = None          # the document's path, as the workspace shows it


def build_prompt(prefix: str, suffix: str, budget_tokens: int, files: Iterable[ContextFile] = (),
                 path: str | None = None) -> Prompt:
    """Bound prefix and suffix to what a `budget_tokens` prompt could use, with room to spare."""
    chars = max(MIN_CHARS, budget_tokens * CHARS_PER_TOKEN)
    return Prompt(keep_last_lines(prefix, chars), keep_first_lines(suffix, chars // 2), tuple(files), path)


def keep_last_lines(text: str, max_chars: int, stride: int = PREFIX_STRIDE_LINES) -> str:
    """The end of `text` within `max_chars`, from a line whose index is a multiple of `stride`."""
    if len(text) <= max_chars:
        return text
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line))
    first = next((i for i, start in enumerate(starts) if len(text) - start <= max_chars), None)
    if first is None:  # the last line alone is too long: cut it by characters
        return text[-max_chars:]
    return text[starts[min(-(-first // stride) * stride, len(lines) - 1)]:]


def keep_first_lines(text: str, max_chars: int) -> str:
    """The start of `text` within `max_chars`, ending at a line end where there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = head.rfind("\n")
    return head[:end + 1] if end > 0 else head


# ---- neighbouring snippets ----------------------------------------------------------------------
def identifiers(text: str) -> set[str]:
    return set(IDENTIFIER.findall(text))


def snippet_query(prefix: str) -> set[str]:
    """Identifiers of the lines before the cursor, without the word being typed: the choice of
    snippets, and with it the prompt's first tokens, stays the same while a word is typed."""
    lines = prefix.splitlines(keepends=True)[-QUERY_LINES:]
    text = "".join(lines)
    return identifiers(text[:len(text) - len(re.search(r"[A-Za-z0-9_]*$", text).group())])


def select_neighbours(query: set[str], documents: Iterable[tuple[str, str]], max_files: int,
                      window_lines: int = WINDOW_LINES) -> list[ContextFile]:
    """The window of each document most like the query (Jaccard over identifiers), best files
    first, at most `max_files`; the engine fits them into its budget in that order."""
    if not query or max_files <= 0:
        return []
    best: list[tuple[float, ContextFile]] = []
    for path, text in documents:
        # A file the code names (`import helpers`, `helpers.f`) is a neighbour whatever its windows say.
        named = 0.5 if _module_name(path) in query else 0.0
        top: tuple[float, str] | None = None
        for window, words in _windows(text, window_lines):
            score = named + (len(query & words) / len(query | words) if words else 0.0)
            if score > 0 and (top is None or score > top[0]):
                top = (score, window)
        if top is not None and top[1].strip():
            best.append((top[0], ContextFile(path, top[1])))
    best.sort(key=lambda scored: (-scored[0], scored[1].path))
    return [file for _, file in best[:max_files]]


@functools.lru_cache(maxsize=64)
def _windows(text: str, window_lines: int) -> tuple[tuple[str, frozenset[str]], ...]:
    """Overlapping windows of a document and their identifiers. Cached: between keystrokes the other
    documents' texts are the same string objects, so a lookup costs no rescan (7 ms for 5000 lines)."""
    lines = text.splitlines(keepends=True)
    step = max(1, window_lines // 2)
    windows = ("".join(lines[start:start + window_lines]) for start in range(0, max(1, len(lines) - step), step))
    return tuple((window, frozenset(identifiers(window))) for window in windows)


def _module_name(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0]
