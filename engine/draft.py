"""Drafts for speculative decoding, taken from the context the engine already holds.

Code repeats itself: a name defined earlier, the next line of a pattern, the rest of a call the
neighbouring file makes. Prompt-lookup decoding (Saxena 2023; llama.cpp's `lookup`) proposes the
tokens that followed the latest earlier occurrence of the sequence's last few tokens; the engine
checks the whole draft in one forward and keeps the longest prefix the model agrees with, so a
draft costs one wider forward and saves up to `max_tokens` narrow ones.

A `DraftSource` is anything that proposes; `PromptLookup` searches n-gram indexes (the request's
own tokens, and the cache model's: the whole prefix and suffix and the neighbouring files). A
workspace index plugs in as one more source.
"""
from __future__ import annotations

from typing import Protocol

from .cache_model import NgramCache


class DraftSource(Protocol):
    def propose(self, history: list[int], max_tokens: int) -> tuple[int, list[int]]:
        """(match length, up to max_tokens tokens likely to follow `history`); (0, []) for none."""
        ...


class PromptLookup:
    """The continuation of the longest match of the history's tail (at least `min_match` tokens)
    over several n-gram indexes; on a tie the earlier index wins. `live` is the index whose last
    sequence is the history itself (the request's prompt and output so far)."""

    def __init__(self, indexes: list[NgramCache], min_match: int, live: NgramCache | None = None):
        self.indexes, self.min_match, self.live = indexes, min_match, live

    def propose(self, history: list[int], max_tokens: int) -> tuple[int, list[int]]:
        best, draft = 0, []
        for index in self.indexes:
            order, tokens = index.continuation(history, max_tokens, self.min_match)
            if tokens and order > best:
                best, draft = order, tokens
                if index is self.live and len(tokens) < max_tokens:
                    # The match ran into the present (a line repeated, a loop): what followed it
                    # then is the draft itself, so the draft repeats with that period.
                    draft = [tokens[i % len(tokens)] for i in range(max_tokens)]
        return best, draft


def propose(sources: list[DraftSource], history: list[int], max_tokens: int) -> list[int]:
    """The draft of the source with the longest match."""
    best, draft = 0, []
    for source in sources:
        order, tokens = source.propose(history, max_tokens)
        if tokens and order > best:
            best, draft = order, tokens
    return draft
