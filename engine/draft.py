"""Drafts for speculative decoding, taken from the context the engine already holds.

Code repeats itself: a name defined earlier, the next line of a pattern, the rest of a call the
neighbouring file makes. Prompt-lookup decoding (Saxena 2023; llama.cpp's `lookup`) proposes the
tokens that followed the latest earlier occurrence of the sequence's last few tokens; the engine
checks the whole draft in one forward and keeps the longest prefix the model agrees with, so a
draft costs one wider forward and saves up to `max_tokens` narrow ones.

A `DraftSource` is anything that proposes; `PromptLookup` searches the request's own tokens (a
`LiveIndex` that grows as it generates) and reads the matches the cache model computes anyway (in
the whole prefix and suffix, the neighbouring files, the workspace) for the text before the cursor
and what was generated: one search a token serves both.

A draft the model rejects still widens the step (and in a batch every row is padded to the widest),
so `DraftSwitch` turns a request's drafts off while the model keeps rejecting them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .cache_model import CacheModel
    from .request import Request

MAX_ORDER = 8          # longest context (tokens) the live index matches
SEPARATOR = -1         # between sequences, so no context spans two of them
ORDERS = (1, 2, 3, 4, 6, 8)  # context lengths it matches, longest first at query time
HASH_BASE = 1_000_003
MASK64 = (1 << 64) - 1


class LiveIndex:
    """The request's own tokens (its prompt, then what it generates), searchable for the tokens that
    followed an earlier occurrence of a context of 1 to 8 tokens (ORDERS).

    Nothing is counted ahead: for each order the hash of the tokens before every position is kept
    in a row of one array (vectorised with numpy), and a query compares the history's hashes of
    every order against all of them at once, then takes the longest order found. Appending a token
    updates one position per order.
    """

    def __init__(self, ids: list[int] = (), max_order: int = MAX_ORDER):
        self.max_order = max_order
        self.orders = [k for k in ORDERS if k <= max_order]
        self.tokens = np.full(256, SEPARATOR, dtype=np.int64)
        self.hashes = np.zeros((len(self.orders), 256), dtype=np.int64)  # row i: order self.orders[i]
        self.size = 0
        self.add_sequence(ids)

    def _grow(self, end: int) -> None:
        if end <= len(self.tokens):
            return
        n = max(end, 2 * len(self.tokens))
        tokens = np.full(n, SEPARATOR, dtype=np.int64)
        tokens[:self.size] = self.tokens[:self.size]
        hashes = np.zeros((len(self.orders), n), dtype=np.int64)
        hashes[:, :self.size] = self.hashes[:, :self.size]
        self.tokens, self.hashes = tokens, hashes

    def add_sequence(self, ids: list[int]) -> None:
        start, ids = self.size, [SEPARATOR] + list(ids)
        end = start + len(ids)
        self._grow(end)
        self.tokens[start:end] = ids
        self.size = end
        with np.errstate(over="ignore"):  # the hashes wrap around modulo 2**64 on purpose
            for row, k in enumerate(self.orders):
                # position i's context is tokens[i-k:i]; padded[i + j] is tokens[i - k + j]
                padded = np.concatenate([np.full(k, SEPARATOR, dtype=np.int64), self.tokens[:end]])
                window = np.zeros(end - start, dtype=np.int64)
                for j in range(k):
                    window = window * HASH_BASE + padded[start + j:end + j]
                self.hashes[row, start:end] = window

    def append(self, token: int) -> None:
        """Extend the last sequence (the request's own text grows as it generates)."""
        self._grow(self.size + 1)
        self.tokens[self.size] = token
        before = self.tokens[max(0, self.size - self.max_order):self.size].tolist()
        self.hashes[:, self.size] = [context_hash(before[len(before) - k:] if k < len(before) else before, k)
                                     for k in self.orders]
        self.size += 1

    def find(self, history: list[int], min_order: int = 1) -> tuple[int, np.ndarray | None]:
        """(order, the positions right after each occurrence) for the longest context of
        `history`, at least min_order tokens, seen before with a token after it; (0, None) when
        there is none."""
        rows = [row for row, k in enumerate(self.orders) if min_order <= k <= len(history)]
        if not rows:
            return 0, None
        tail = [int(t) for t in history[-self.max_order:]]
        wanted = [context_hash(tail[len(tail) - self.orders[row]:], self.orders[row]) for row in rows]
        hits = self.hashes[rows[0]:rows[-1] + 1, :self.size] == np.array(wanted, dtype=np.int64)[:, None]
        for i in reversed(np.flatnonzero(hits.any(axis=1)).tolist()):  # the longest order first
            found = np.flatnonzero(hits[i])
            found = found[self.tokens[found] != SEPARATOR]
            if len(found):
                return self.orders[rows[i]], found
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
    def propose(self, request: "Request", max_tokens: int) -> tuple[int, list[int]]:
        """(match length, up to max_tokens tokens likely to follow the request's tokens); (0, []) for none."""
        ...


class PromptLookup:
    """The continuation of the longest match of the history's tail (at least `min_match` tokens)
    in the request's own tokens (`live`) or in the sources of `context`, a cache model over the
    text before the cursor whose matches for the same history the decoding step then mixes in; on
    a tie the request's own tokens win, then the earlier source."""

    def __init__(self, live: LiveIndex, context: "CacheModel | None", min_match: int):
        self.live, self.context, self.min_match = live, context, min_match

    def propose(self, request: "Request", max_tokens: int) -> tuple[int, list[int]]:
        best, draft = self.live.continuation(request.tokens, max_tokens, self.min_match)
        if draft and len(draft) < max_tokens:
            # The match ran into the present (a line repeated, a loop): what followed it then is
            # the draft itself, so the draft repeats with that period.
            draft = [draft[i % len(draft)] for i in range(max_tokens)]
        if self.context is not None:
            self.context.follow(request.output_ids)
            for _, match in self.context.matches():
                if match.length >= self.min_match and match.length > best:
                    tokens = match.draft(max_tokens)
                    if tokens:
                        best, draft = match.length, tokens
        return best, draft


def propose(sources: list[DraftSource], request: "Request", max_tokens: int) -> list[int]:
    """The draft of the source with the longest match."""
    best, draft = 0, []
    for source in sources:
        order, tokens = source.propose(request, max_tokens)
        if tokens and order > best:
            best, draft = order, tokens
    return draft


# Measured on the shipped model (the compiled decode step, one row, a loaded 2-core machine): a
# forward of 1 + 1 tokens costs ~1.6 one-token forwards, 1 + 2 ~2.3, 1 + 8 ~6, and in a batch every
# row is padded to the widest. So a draft pays only when well over half of it is kept.
PROBE_TOKENS = 16     # drafted tokens a request's acceptance is judged on
MIN_ACCEPTANCE = 0.5  # below this share kept, drafts go off ...
PAUSE_TOKENS = 16     # ... for this many generated tokens, then a new probe starts


@dataclass
class DraftSwitch:
    """Whether a request drafts now, from its own acceptance: after every PROBE_TOKENS drafted
    tokens, drafts go off for PAUSE_TOKENS generated tokens if fewer than MIN_ACCEPTANCE of them
    were kept, and come back on for a new probe after that (code that copies the context often
    starts later in a completion)."""
    proposed: int = 0
    accepted: int = 0
    off_until: int = 0        # drafts are off until the request has generated this many tokens

    def allows(self, generated: int) -> bool:
        return generated >= self.off_until

    def record(self, proposed: int, accepted: int, generated: int) -> None:
        """A step checked `proposed` drafted tokens and kept `accepted`; the request has generated
        `generated` tokens after it."""
        self.proposed += proposed
        self.accepted += accepted
        if self.proposed >= PROBE_TOKENS:
            if self.accepted < MIN_ACCEPTANCE * self.proposed:
                self.off_until = generated + PAUSE_TOKENS
            self.proposed = self.accepted = 0
