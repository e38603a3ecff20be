"""A cache model mixed into decoding: token n-grams from the request's own context.

A small network trained on a CPU cannot know a project's names, but the open file and its
neighbours hold them (Hellendoorn and Devanbu, FSE 2017: a local n-gram cache made n-gram models
competitive with neural ones on source code). Each request gets its own cache, built from its
context tokens (prefix, suffix, extra snippets); the tokens it generates extend the history it matches. At each
step the cache's next-token distribution for the longest context it has seen is interpolated with
the network's:

    p = (1 - lambda) * p_network + lambda * p_cache

where lambda grows with the length of the matched context (up to FULL_TRUST_ORDER tokens). With
weight 0 the cache is never built and decoding is the plain engine's, token for token.
"""
from __future__ import annotations

import numpy as np
import torch

MAX_ORDER = 8          # longest context (tokens) the cache matches
# Tuned on stdlib validation-split files, never on the held-out projects (MODEL_CARD.md): with a
# network this small, trusting any match almost fully and letting the network break ties and fill
# gaps scored best (edit similarity 0.32 vs 0.31 for the cache alone, 0.27-0.31 for lower weights).
FULL_TRUST_ORDER = 1   # a match this long or longer gets the full weight
DEFAULT_WEIGHT = 0.97
SEPARATOR = -1         # between sequences, so no context spans two of them
ORDERS = (1, 2, 3, 4, 6, 8)  # context lengths the cache matches, longest first at query time
HASH_BASE = 1_000_003
MASK64 = (1 << 64) - 1


class NgramCache:
    """The next tokens after every earlier occurrence of a context of 1 to 8 tokens (ORDERS).

    Nothing is counted ahead: for each order the hash of the tokens before every position is kept
    in an array (vectorised with numpy), and a query compares the history's hash against all of
    them at once, longest order first. Appending a token updates one position per order.
    """

    def __init__(self, max_order: int = MAX_ORDER):
        self.max_order = max_order
        self.orders = [k for k in ORDERS if k <= max_order]
        self.tokens = np.full(256, SEPARATOR, dtype=np.int64)
        self.hashes = {k: np.zeros(256, dtype=np.int64) for k in self.orders}
        self.size = 0

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

    def predict(self, history: list[int]) -> tuple[int, np.ndarray | None]:
        """(order, the tokens that followed each occurrence) for the longest context of `history`
        seen before; (0, None) when even its last token never occurred."""
        order, found = self.find(history)
        return (order, self.tokens[found]) if order else (0, None)

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


class CacheModel:
    """The engine's per-request logits processor: mixes the n-gram cache into the network's output.

    `contexts` are token sequences this request's own cache learns from (prefix, suffix);
    `shared` are read-only caches of extra snippets (neighbouring files), built once and reused
    across requests; `history` is what precedes the cursor, which generated tokens extend.
    """

    def __init__(self, contexts: list[list[int]], history: list[int], weight: float = DEFAULT_WEIGHT,
                 max_order: int = MAX_ORDER, shared: list[NgramCache] | None = None):
        self.weight = weight
        self.cache = NgramCache(max_order)
        for ids in contexts:
            self.cache.add_sequence(ids)
        self.caches = [self.cache] + list(shared or [])
        self.context_history = list(history[-max_order:])
        self.history = list(self.context_history)

    def predict(self) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """(order, token ids, counts) for the longest context any of the caches has seen, pooling
        the caches that saw a context that long."""
        best, found = 0, []
        for cache in self.caches:
            order, nxt = cache.predict(self.history)
            if nxt is None or order < best:
                continue
            if order > best:
                best, found = order, []
            found.append(nxt)
        if not found:
            return 0, None, None
        ids, counts = np.unique(np.concatenate(found) if len(found) > 1 else found[0], return_counts=True)
        return best, ids, counts

    def mixture_weight(self, order: int, counts: np.ndarray) -> float:
        """Grows with the matched context's length; below 1 always (the network keeps a share)."""
        return min(self.weight * min(1.0, order / FULL_TRUST_ORDER), 0.999)

    def observe(self, output_ids: list[int]) -> None:
        """The history the next query matches: the context before the cursor, then `output_ids`.

        A function of `output_ids` alone, so speculative decoding can ask about a draft's tokens
        and then about fewer of them."""
        # Generated tokens extend the history only: counted into the cache too, they would make
        # the model's own repetitions self-reinforcing (measured: loops like "'url', 'url', ...").
        n = self.cache.max_order
        self.history = (self.context_history + list(output_ids[-n:]))[-n:]

    def __call__(self, request, logits: torch.Tensor) -> torch.Tensor:
        self.observe(request.output_ids)
        order, ids, counts = self.predict()
        if ids is None:
            return logits
        lam = self.mixture_weight(order, counts)
        if lam <= 0.0:
            return logits
        # p = (1 - lam) * p_net + lam * p_cache. Softmax ignores a shared shift, so every logit
        # stays as it is (that is (1 - lam) * p_net up to the shift) and only the tokens the cache
        # knows get the exact mixture: no full-vocabulary pass beyond one logsumexp.
        p_cache = counts / counts.sum()
        shift = float(np.log1p(-lam))
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            # numpy on the scheduler thread: torch's small ops there pay for waking its OpenMP
            # workers (measured 188 us a step in the engine vs 47 us alone; numpy: see the card).
            row = logits.numpy()
            top = row.max()
            lse = top + np.log(np.exp(row - top).sum())
            row[ids] = np.log((1.0 - lam) * np.exp(row[ids] - lse) + lam * p_cache) + lse - shift
            return logits
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)
        index = torch.from_numpy(ids).to(logits.device)
        p_net = torch.exp(logits[index] - lse)
        mix = torch.from_numpy(p_cache).to(device=logits.device, dtype=logits.dtype)
        logits[index] = torch.log((1.0 - lam) * p_net + lam * mix) + lse - shift
        return logits
