"""A cache model mixed into decoding: token n-grams from the request's own context.

A small network trained on a CPU cannot know a project's names, but the open file and its
neighbours hold them (Hellendoorn and Devanbu, FSE 2017: a local n-gram cache made n-gram models
competitive with neural ones on source code). Each request gets its own cache, built from its
context tokens (prefix, suffix, extra snippets) and extended with the tokens it generates. At each
step the cache's next-token distribution for the longest context it has seen is interpolated with
the network's:

    p = (1 - lambda) * p_network + lambda * p_cache

where lambda grows with the length of the matched context and with how consistent its
continuations were (Witten-Bell: seen / (seen + distinct)). With weight 0 the cache is never
built and decoding is the plain engine's, token for token.
"""
from __future__ import annotations

from collections import defaultdict

import torch

MAX_ORDER = 8          # longest context (tokens) the cache matches
FULL_TRUST_ORDER = 4   # a match this long or longer gets the full weight
DEFAULT_WEIGHT = 0.95  # tuned on stdlib validation-split files, not the held-out set (MODEL_CARD.md)


class NgramCache:
    """Counts of next tokens after every context of 1..max_order tokens."""

    def __init__(self, max_order: int = MAX_ORDER):
        self.max_order = max_order
        self.counts: list[dict[tuple[int, ...], dict[int, int]]] = [defaultdict(dict) for _ in range(max_order + 1)]

    def add_sequence(self, ids: list[int]) -> None:
        for i in range(1, len(ids)):
            self._count(ids, i)

    def add_next(self, history: list[int]) -> None:
        """Count the last token of `history` after its preceding contexts."""
        if len(history) > 1:
            self._count(history, len(history) - 1)

    def _count(self, ids: list[int], i: int) -> None:
        nxt = ids[i]
        for n in range(1, min(self.max_order, i) + 1):
            table = self.counts[n][tuple(ids[i - n:i])]
            table[nxt] = table.get(nxt, 0) + 1

    def predict(self, history: list[int]) -> tuple[int, dict[int, int] | None]:
        """(order, next-token counts) for the longest context of `history` seen before."""
        for n in range(min(self.max_order, len(history)), 0, -1):
            table = self.counts[n].get(tuple(history[-n:]))
            if table:
                return n, table
        return 0, None


class CacheModel:
    """The engine's per-request logits processor: mixes the n-gram cache into the network's output.

    `contexts` are token sequences this request's own cache learns from (prefix, suffix);
    `shared` are read-only caches built once for extra snippets (neighbouring files) and reused
    across requests; `history` is what precedes the cursor, which generated tokens extend.
    """

    def __init__(self, contexts: list[list[int]], history: list[int], weight: float = DEFAULT_WEIGHT,
                 max_order: int = MAX_ORDER, shared: list[NgramCache] | None = None):
        self.weight = weight
        self.cache = NgramCache(max_order)
        for ids in contexts:
            self.cache.add_sequence(ids)
        self.caches = [self.cache] + list(shared or [])
        self.history = list(history[-max_order:])
        self.seen_outputs = 0

    def mixture_weight(self, order: int, counts: dict[int, int]) -> float:
        seen = sum(counts.values())
        return self.weight * min(1.0, order / FULL_TRUST_ORDER) * seen / (seen + len(counts))

    def predict(self) -> tuple[int, dict[int, int] | None]:
        """The longest context any of the caches has seen, with their counts merged."""
        history = self.history
        for n in range(min(self.cache.max_order, len(history)), 0, -1):
            context = tuple(history[-n:])
            tables = [t for t in (c.counts[n].get(context) for c in self.caches) if t]
            if len(tables) == 1:
                return n, tables[0]
            if tables:
                merged: dict[int, int] = {}
                for table in tables:
                    for token, count in table.items():
                        merged[token] = merged.get(token, 0) + count
                return n, merged
        return 0, None

    def next_distribution(self) -> tuple[float, dict[int, int] | None]:
        order, counts = self.predict()
        if counts is None:
            return 0.0, None
        return self.mixture_weight(order, counts), counts

    def observe(self, output_ids: list[int]) -> None:
        """Append newly generated tokens to the history and to the request's own cache."""
        for token in output_ids[self.seen_outputs:]:
            self.history.append(token)
            self.cache.add_next(self.history)
        self.seen_outputs = len(output_ids)
        del self.history[:-self.cache.max_order - 1]

    def __call__(self, request, logits: torch.Tensor) -> torch.Tensor:
        self.observe(request.output_ids)
        lam, counts = self.next_distribution()
        if counts is None or lam <= 0.0:
            return logits
        probs = torch.softmax(logits.float(), dim=-1) * (1.0 - lam)
        total = sum(counts.values())
        ids = torch.tensor(list(counts.keys()), device=logits.device)
        probs[ids] += lam * torch.tensor([c / total for c in counts.values()], device=logits.device)
        return torch.log(probs).to(logits.dtype)
