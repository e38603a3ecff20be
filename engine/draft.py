"""Drafts for speculative decoding, taken from the context the engine already holds.

Code repeats itself: a name defined earlier, the next line of a pattern, the rest of a call the
neighbouring file makes. Prompt-lookup decoding (Saxena 2023; llama.cpp's `lookup`) proposes the
tokens that followed the latest earlier occurrence of the sequence's last few tokens; the engine
checks the whole draft in one forward and keeps the longest prefix the model agrees with, so a
draft costs one wider forward and saves up to `max_tokens` narrow ones.

A `DraftSource` is anything that proposes; `PromptLookup` searches the request's own tokens (a
`LiveIndex` that grows as it generates) and the cache model's suffix indexes (the whole prefix and
suffix, the neighbouring files, the workspace).
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .suffix_index import Match

MAX_ORDER = 8          # longest context (tokens) the live index matches
SEPARATOR = -1         # between sequences, so no context spans two of them
ORDERS = (1, 2, 3, 4, 6, 8)  # context lengths it matches, longest first at query time
HASH_BASE = 1_000_003
MASK64 = (1 << 64) - 1


class LiveIndex:
    """The request's own tokens (its prompt, then what it generates), searchable for the tokens that
    followed an earlier occurrence of a context of 1 to 8 tokens (ORDERS).

    Nothing is counted ahead: for each order the hash of the tokens before every position is kept
    in an array (vectorised with numpy), and a query compares the history's hash against all of
    them at once, longest order first. Appending a token updates one position per order.
    """

    def __init__(self, ids: list[int] = (), max_order: int = MAX_ORDER):
        self.max_order = max_order
        self.orders = [k for k in ORDERS if k <= max_order]
        self.tokens = np.full(256, SEPARATOR, dtype=np.int64)
        self.hashes = {k: np.zeros(256, dtype=np.int64) for k in self.orders}
        self.size = 0
        self.add_sequence(ids)

    def _grow(self, end: int) -> None:
        if end <= len(self.tokens):
            return
        n = max(end, 2 * len(self.tokens))
        tokens = np.full(n, SEPARATOR, dtype=np.int64)
        tokens[:self.size] = self.tokens[:self.size]
        self.tokens = tokens
        for k, h in self.hashes.items():
            grown = np.zeros(n, dtype=np.int64)
            grown[:self.size] = h[:self.size]
            self.hashes[k] = grown

    def add_sequence(self, ids: list[int]) -> None:
        start, ids = self.size, [SEPARATOR] + list(ids)
        end = start + len(ids)
        self._grow(end)
        self.tokens[start:end] = ids
        self.size = end
        with np.errstate(over="ignore"):  # the hashes wrap around modulo 2**64 on purpose
            for k, h in self.hashes.items():
                # position i's context is tokens[i-k:i]; padded[i + j] is tokens[i - k + j]
                padded = np.concatenate([np.full(k, SEPARATOR, dtype=np.int64), self.tokens[:end]])
                window = np.zeros(end - start, dtype=np.int64)
                for j in range(k):
                    window = window * HASH_BASE + padded[start + j:end + j]
                h[start:end] = window

    def append(self, token: int) -> None:
        """Extend the last sequence (the request's own text grows as it generates)."""
        self._grow(self.size + 1)
        self.tokens[self.size] = token
        for k, h in self.hashes.items():
            h[self.size] = context_hash(self.tokens[max(0, self.size - k):self.size].tolist(), k)
        self.size += 1

    def find(self, history: list[int], min_order: int = 1) -> tuple[int, np.ndarray | None]:
        """(order, the positions right after each occurrence) for the longest context of
        `history`, at least min_order tokens, seen before with a token after it; (0, None) when
        there is none."""
        for k in reversed(self.orders):
            if k < min_order:
                break
            if len(history) < k:
                continue
            found = np.flatnonzero(self.hashes[k][:self.size] == context_hash(history[-k:], k))
            found = found[self.tokens[found] != SEPARATOR]
            if len(found):
                return k, found
        return 0, None

    def continuation(self, history: list[int], max_tokens: int, min_order: int = 1) -> tuple[int, list[int]]:
        """(order, up to max_tokens tokens) that followed the latest occurrence of the longest
        context of `history` (prompt-lookup drafts); (0, []) without a match."""
        order, found = self.find(history, min_order)
        if not order:
            return 0, []
        start = int(found[-1])
        after = self.tokens[start:min(start + max_tokens, self.size)]
        cut = np.flatnonzero(after == SEPARATOR)
        return order, after[:cut[0] if len(cut) else len(after)].tolist()


def context_hash(ids: list[int], k: int) -> int:
    """The same polynomial hash as the vectorised one, for k tokens (padded on the left)."""
    h = 0
    for token in [SEPARATOR] * (k - len(ids)) + list(ids):
        h = (h * HASH_BASE + token) & MASK64
    return h - (1 << 64) if h >= 1 << 63 else h


class DraftSource(Protocol):
    def propose(self, history: list[int], max_tokens: int) -> tuple[int, list[int]]:
        """(match length, up to max_tokens tokens likely to follow `history`); (0, []) for none."""
        ...


class PromptLookup:
    """The continuation of the longest match of the history's tail (at least `min_match` tokens)
    in the request's own tokens (`live`) or in any of `queries` (the cache model's sources); on a
    tie the request's own tokens win, then the earlier query."""

    def __init__(self, live: LiveIndex, queries: list[Callable[..., Match]], min_match: int):
        self.live, self.queries, self.min_match = live, queries, min_match

    def propose(self, history: list[int], max_tokens: int) -> tuple[int, list[int]]:
        best, draft = self.live.continuation(history, max_tokens, self.min_match)
        if draft and len(draft) < max_tokens:
            # The match ran into the present (a line repeated, a loop): what followed it then is
            # the draft itself, so the draft repeats with that period.
            draft = [draft[i % len(draft)] for i in range(max_tokens)]
        for query in self.queries:
            match = query(history)
            if match.length >= self.min_match and match.length > best:
                tokens = match.draft(max_tokens)
                if tokens:
                    best, draft = match.length, tokens
        return best, draft


def propose(sources: list[DraftSource], history: list[int], max_tokens: int) -> list[int]:
    """The draft of the source with the longest match."""
    best, draft = 0, []
    for source in sources:
        order, tokens = source.propose(history, max_tokens)
        if tokens and order > best:
            best, draft = order, tokens
    return draft
