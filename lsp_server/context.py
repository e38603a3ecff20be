"""The prompt: text before and after the cursor within a token budget, plus snippets from other files.

The nearest lines of both sides are kept and the far ends trimmed. The prefix's first kept line
moves in steps of `PREFIX_STRIDE_LINES`, so that while the user types, successive prompts start
with the same tokens and the engine can reuse the KV cache it already holds for them (prefix reuse).
Snippets from neighbouring files go first, as comments, so the FIM prompt stays one valid file.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

TokenCounter = Callable[[str], int]

PREFIX_STRIDE_LINES = 8
QUERY_LINES = 30             # lines before the cursor whose identifiers select neighbour snippets
WINDOW_LINES = 20            # size of a candidate snippet in a neighbouring file
# Of the rest of the file, what the cache model gets on each side: with neighbour snippets it stays
# under the HTTP API's 64 KB extra_context limit in remote mode (4 bytes a character at worst).
FAR_CONTEXT_CHARS = 6_000
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")

LINE_COMMENTS = {
    "python": "#", "shellscript": "#", "ruby": "#", "perl": "#", "r": "#", "yaml": "#", "toml": "#",
    "makefile": "#", "dockerfile": "#", "powershell": "#", "elixir": "#", "julia": "#", "nim": "#",
    "lua": "--", "sql": "--", "haskell": "--", "ada": "--", "elm": "--",
    "latex": "%", "tex": "%", "erlang": "%", "matlab": "%", "lisp": ";", "clojure": ";", "scheme": ";",
    "vim": '"', "bat": "REM",
}


def estimate_tokens(text: str) -> int:
    """Without the model's tokenizer (remote mode): code BPE averages about three characters a token."""
    return (len(text) + 2) // 3


@dataclass(frozen=True)
class Snippet:
    path: str
    text: str
    score: float = 0.0


@dataclass(frozen=True)
class Prompt:
    prefix: str                      # what goes before the cursor, snippet header included
    suffix: str
    snippets: tuple[Snippet, ...] = ()
    # The rest of the file, for the engine's cache model only (the network never sees it): the part
    # of the prefix the budget dropped, and the lines after the cursor's line. Both stay the same
    # while the user types on a line, so the engine's memo of their n-grams keeps hitting.
    far_before: str = ""
    far_after: str = ""
    document_path: str | None = None  # the file being edited: the engine leaves its indexed copy out


def build_prompt(prefix: str, suffix: str, count: TokenCounter, budget: int, suffix_fraction: float = 0.25,
                 snippets: Iterable[Snippet] = (), language_id: str = "python",
                 document_path: str | None = None) -> Prompt:
    """Fit snippets, prefix and suffix into `budget` tokens; suffix gets at most its share unless spare."""
    snippets = tuple(snippets)
    header = render_snippets(snippets, LINE_COMMENTS.get(language_id, "//"))
    budget = max(1, budget - count(header)) if header else budget
    suffix_share = int(budget * suffix_fraction)
    kept_suffix = keep_first_lines(suffix, count, suffix_share)
    kept_prefix = keep_last_lines(prefix, count, budget - count(kept_suffix))
    if len(kept_suffix) < len(suffix):  # prefix left room: give it to the suffix
        kept_suffix = keep_first_lines(suffix, count, budget - count(kept_prefix))
    dropped = len(prefix) - len(kept_prefix)
    far_before = prefix[max(0, dropped - FAR_CONTEXT_CHARS):dropped]
    line_end = suffix.find("\n")
    far_after = "" if line_end == -1 else suffix[line_end + 1:line_end + 1 + FAR_CONTEXT_CHARS]
    return Prompt(header + kept_prefix, kept_suffix, snippets, far_before, far_after, document_path)


def keep_last_lines(text: str, count: TokenCounter, budget: int, stride: int = PREFIX_STRIDE_LINES) -> str:
    """The last lines of `text` within `budget`; the first kept line index is a multiple of `stride`."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return ""
    last = lines[-1]
    used = count(last)
    if used > budget:
        return _tail_chars(last, count, budget)
    start = len(lines) - 1
    while start > 0:
        cost = count(lines[start - 1])
        if used + cost > budget:
            break
        used += cost
        start -= 1
    if start > 0:
        start = min(-(-start // stride) * stride, len(lines) - 1)
    return "".join(lines[start:])


def keep_first_lines(text: str, count: TokenCounter, budget: int) -> str:
    """The first lines of `text` within `budget`; the cursor's own line is cut by characters if needed."""
    if budget <= 0 or not text:
        return ""
    lines = text.splitlines(keepends=True)
    used = count(lines[0])
    if used > budget:
        return _head_chars(lines[0], count, budget)
    end = 1
    while end < len(lines):
        cost = count(lines[end])
        if used + cost > budget:
            break
        used += cost
        end += 1
    return "".join(lines[:end])


def _tail_chars(line: str, count: TokenCounter, budget: int) -> str:
    low, high = 0, len(line)  # find the longest tail that fits
    while low < high:
        mid = (low + high + 1) // 2
        if count(line[len(line) - mid:]) <= budget:
            low = mid
        else:
            high = mid - 1
    return line[len(line) - low:]


def _head_chars(line: str, count: TokenCounter, budget: int) -> str:
    low, high = 0, len(line)
    while low < high:
        mid = (low + high + 1) // 2
        if count(line[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return line[:low]


# ---- neighbouring snippets ----------------------------------------------------------------------
def identifiers(text: str) -> set[str]:
    return set(IDENTIFIER.findall(text))


def snippet_query(prefix: str) -> set[str]:
    """Identifiers of the lines before the cursor, without the word being typed: the choice of
    snippets, and with it the prompt's first tokens, stays the same while a word is typed."""
    lines = prefix.splitlines(keepends=True)[-QUERY_LINES:]
    text = "".join(lines)
    return identifiers(text[:len(text) - len(re.search(r"[A-Za-z0-9_]*$", text).group())])


def select_neighbours(query: set[str], documents: Iterable[tuple[str, str]], count: TokenCounter,
                      budget: int, max_files: int, window_lines: int = WINDOW_LINES) -> list[Snippet]:
    """The window of each document most like the query (Jaccard over identifiers), best files first,
    as many as fit in `budget` tokens and `max_files`."""
    if not query or budget <= 0 or max_files <= 0:
        return []
    best: list[Snippet] = []
    for path, text in documents:
        # A file the code names (`import helpers`, `helpers.f`) is a neighbour whatever its windows say.
        named = 0.5 if _module_name(path) in query else 0.0
        top: Snippet | None = None
        for window, words in _windows(text, window_lines):
            score = named + (len(query & words) / len(query | words) if words else 0.0)
            if score > 0 and (top is None or score > top.score):
                top = Snippet(path, window, score)
        if top is not None:
            best.append(top)
    best.sort(key=lambda s: (-s.score, s.path))
    chosen, used = [], 0
    for snippet in best[:max_files]:
        text = keep_first_lines(snippet.text, count, budget - used)
        if text.strip():
            chosen.append(Snippet(snippet.path, text, snippet.score))
            used += count(text)
    return chosen


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


def render_snippets(snippets: Iterable[Snippet], comment: str = "#") -> str:
    parts = []
    for snippet in snippets:
        body = "".join(f"{comment} {line}".rstrip() + "\n" for line in snippet.text.splitlines())
        parts.append(f"{comment} Compare this snippet from {snippet.path}:\n{body}")
    return "".join(parts)
