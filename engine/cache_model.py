"""A cache model mixed into decoding: what followed the longest earlier occurrence of the history.

A small network trained on a CPU cannot know a project's names, but the open file, its neighbours
and the rest of the repository hold them (Hellendoorn and Devanbu, FSE 2017: a local n-gram cache
made n-gram models competitive with neural ones on source code). Each source is a token suffix
array (engine/suffix_index.py): the text before the cursor, the text after it, each neighbouring
snippet, and the workspace index. At every step each source reports the longest tail of the
history it holds and the tokens that followed it; the longest match decides (sources tied at that
length pool their counts), and its weight grows with the evidence:

    p = (1 - lambda) * p_network + lambda * p_cache
    lambda = weight * sigmoid(slope * (length - half_length - penalty[source]) + frequency * ln(top count))

so a one-token match (after `return`, whatever followed the last `return`) gets little weight and
the network decides, while a match of a dozen tokens (a name, a call pattern the project repeats)
gets nearly all of it. The fixed weight this replaces (0.97 from a one-token match on) copied what
followed the last `return` again and again: the loops of issue 16.

Generated tokens extend the history the sources match, never the sources themselves: counted into
them, the model's own repetitions would become self-reinforcing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .suffix_index import MAX_MATCH, Match, SuffixIndex

DEFAULT_WEIGHT = 0.97  # the most the cache gets: the network always keeps a share


@dataclass(frozen=True)
class MixConfig:
    """How much a match is trusted. Tuned on the held-out projects' tuning lines (never the lines
    the model card reports) with `code-assistant eval --tune-mix`: over 48 points edit similarity
    ranged 0.376-0.405, and these values tie for the best (MODEL_CARD.md). With a network this
    weak the exact curve matters little; what matters is that a one-token match gets ~10 %, not 97 %."""
    weight: float = DEFAULT_WEIGHT
    half_length: float = 4.0     # match length (tokens) at which the cache gets half of `weight`
    slope: float = 0.75          # trust gained per token of match, in logits
    frequency: float = 0.5       # trust gained per e-fold of occurrences of the most frequent next token
    # Tokens taken off a source's match length before it is trusted: the text after the cursor is
    # what the user is about to replace or already has, a copy of it is often a duplicate.
    penalty: dict[str, float] = field(default_factory=lambda: {"suffix": 1.0})

    def trust(self, source: str, length: int, top_count: int) -> float:
        """The logit of the cache's share for a match (before `weight`)."""
        return (self.slope * (length - self.half_length - self.penalty.get(source, 0.0))
                + self.frequency * math.log(max(1, top_count)))


# A source answers: the longest tail of this history you hold (its match for the history one token
# shorter, or that match's length, bounds the search), and what followed it.
Source = Callable[..., Match]


class CacheModel:
    """The engine's per-request logits processor. `sources` are (kind, query) pairs; `history` is
    the tokens before the cursor, which generated tokens extend. Its matches are computed once per
    history: the request's drafts (engine/draft.py PromptLookup) read the same ones before a step."""

    def __init__(self, sources: list[tuple[str, Source]], history: list[int], config: MixConfig | None = None):
        self.config = config or MixConfig()
        self.sources = sources
        self.history = list(history[-MAX_MATCH:])
        self.previous: list[Match | None] = [None] * len(sources)
        self.seen_outputs = 0
        self._matches: list[tuple[str, Match]] | None = None  # for the history as it is

    @classmethod
    def from_contexts(cls, contexts: list[list[int]], history: list[int], config: MixConfig | None = None,
                      kind: str = "prefix") -> "CacheModel":
        """A cache model over plain token sequences (tests, the cache-only line completer)."""
        index = SuffixIndex.build(contexts)
        return cls([(kind, index.longest_match)], history, config)

    def matches(self) -> list[tuple[str, Match]]:
        """Each source's longest match for the history as it is now (computed at most once)."""
        if self._matches is None:
            self._matches = []
            for i, (kind, query) in enumerate(self.sources):
                match = query(self.history, previous=self.previous[i])
                self.previous[i] = match
                self._matches.append((kind, match))
        return self._matches

    def predict(self) -> tuple[int, np.ndarray | None, np.ndarray | None, float]:
        """(length, next token ids, counts, trust logit) of the longest match over the sources,
        pooling the sources tied at that length; (0, None, None, 0) when nothing matches."""
        found = [(kind, match) for kind, match in self.matches() if match.found]
        if not found:
            return 0, None, None, 0.0
        best = max(m.length for _, m in found)
        tied = [(k, m) for k, m in found if m.length == best]
        if len(tied) == 1:
            ids, counts = tied[0][1].ids, tied[0][1].counts
        else:
            ids, inverse = np.unique(np.concatenate([m.ids for _, m in tied]), return_inverse=True)
            counts = np.zeros(len(ids), np.int64)
            np.add.at(counts, inverse, np.concatenate([m.counts for _, m in tied]))
        trust = max(self.config.trust(k, m.length, max(m.counts.tolist())) for k, m in tied)
        return best, ids, counts, trust

    def mixture_weight(self, trust: float) -> float:
        return min(self.config.weight / (1.0 + math.exp(-trust)), 0.999)

    def observe(self, output_ids: list[int]) -> None:
        """Append newly generated tokens to the history the next query matches."""
        new = output_ids[self.seen_outputs:]
        if len(new) != 1:  # a previous match bounds the next one only for one appended token
            self.previous = [None] * len(self.sources)
        self.history.extend(new)
        self.seen_outputs = len(output_ids)
        del self.history[:-MAX_MATCH]
        self._matches = None

    def follow(self, output_ids: list[int]) -> None:
        """Observe the request's output if it grew since the last call (the scheduler's drafts and
        the logits processor both call it for the same tokens)."""
        if len(output_ids) != self.seen_outputs:
            self.observe(output_ids)

    def __call__(self, request, logits: torch.Tensor) -> torch.Tensor:
        self.follow(request.output_ids)
        length, ids, counts, trust = self.predict()
        if ids is None:
            return logits
        lam = self.mixture_weight(trust)
        if lam <= 0.0:
            return logits
        # p = (1 - lam) * p_net + lam * p_cache. Softmax ignores a shared shift, so every logit
        # stays as it is (that is (1 - lam) * p_net up to the shift) and only the tokens the cache
        # knows get the exact mixture: no full-vocabulary pass beyond one logsumexp.
        shift = math.log1p(-lam)
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            # numpy on the scheduler thread: torch's small ops there pay for waking its OpenMP
            # workers (measured 188 us a step in the engine vs 47 us alone; numpy: see the card).
            # The few cached tokens in Python floats: numpy's per-call cost on arrays of 1-3
            # elements was a quarter of the ~40 us this took a token.
            row = logits.numpy()
            top = float(np.maximum.reduce(row))  # row.max() and .sum() without their Python wrappers
            lse = top + math.log(float(np.add.reduce(np.exp(row - top))))
            counted = counts.tolist()
            total = sum(counted)
            for token, count in zip(ids.tolist(), counted):
                p_net = math.exp(float(row[token]) - lse)
                row[token] = math.log((1.0 - lam) * p_net + lam * count / total) + lse - shift
            return logits
        p_cache = counts / counts.sum()
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=-1)
        index = torch.from_numpy(ids).to(logits.device)
        p_net = torch.exp(logits[index] - lse)
        mix = torch.from_numpy(p_cache).to(device=logits.device, dtype=logits.dtype)
        logits[index] = torch.log((1.0 - lam) * p_net + lam * mix) + lse - shift
        return logits
