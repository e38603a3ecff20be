"""Recent completions by a hash of the text around the cursor, for two habits of the best clients:

- typed-ahead reuse (llama.vim, Tabby): the user types the first characters of the ghost text; the
  rest is the answer, without a new generation;
- prefetch (llama.vim's speculative FIM): once a suggestion shows, the completion that follows
  accepting it is computed in the background and stored here, so Tab-Tab-Tab does not wait.

The key is the text before the cursor (its last `KEY_PREFIX_CHARS`, with its length) and the rest of
the cursor's line, plus whether the suggestion was one line or a block: a completion is only reused
where it was made for exactly that place.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .documents import Cursor
from .postprocess import Edit

MAX_ENTRIES = 250          # llama.vim keeps 250
KEY_PREFIX_CHARS = 4096
MAX_TYPED_AHEAD = 64       # characters typed into a ghost text that can still be answered from it


@dataclass(frozen=True)
class Cached:
    id: str
    edit: Edit
    multiline: bool


def cache_key(prefix: str, line_suffix: str, multiline: bool) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (str(len(prefix)), prefix[-KEY_PREFIX_CHARS:], line_suffix, "m" if multiline else "l"):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def key_of(cursor: Cursor, multiline: bool) -> str:
    return cache_key(cursor.prefix, cursor.line_suffix, multiline)


class CompletionCache:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def put(self, key: str, entry: Cached) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, key: str) -> Cached | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def lookup(self, cursor: Cursor, multiline: bool) -> Cached | None:
        """The suggestion for this place: one made here, or one made up to `MAX_TYPED_AHEAD`
        characters earlier on this line whose text starts with what was typed since (its rest)."""
        line_prefix = cursor.line_prefix
        for typed in range(0, min(len(line_prefix), MAX_TYPED_AHEAD) + 1):
            earlier = cursor.prefix[:len(cursor.prefix) - typed]
            entry = self.get(cache_key(earlier, cursor.line_suffix, multiline))
            if entry is None:
                continue
            rest = _rest_after(entry.edit, line_prefix[len(line_prefix) - typed:])
            if rest is not None:
                self.hits += 1
                return Cached(entry.id, rest, entry.multiline)
        return None


def _rest_after(edit: Edit, typed: str) -> Edit | None:
    if not typed:
        return edit
    if not edit.text.startswith(typed) or not edit.text[len(typed):].strip():
        return None
    return Edit(edit.text[len(typed):], edit.replaces_line_suffix)
