"""Token healing: the prompt's unfinished last piece is dropped and re-generated.

A prompt that ends inside what training text tokenizes as one token (indentation before a keyword,
half a name) otherwise asks the model for a boundary it never saw. The engine drops that piece
from the prompt and masks the first generated tokens to those that spell it again (or start it).
"""
from __future__ import annotations

import bisect
from typing import Callable

import torch

# Only the end of the prompt can be cut short, and no pre-tokenizer chunk of code is longer.
TAIL_CHARS = 64


def split_heal(prompt: str, split: Callable[[str], list[str]]) -> tuple[str, bytes]:
    """(kept text, bytes to re-generate) for a prompt, given the tokenizer's pre-tokenizer `split`.

    BPE never merges across pre-tokenizer chunks, so only the last chunk can be cut short. A chunk
    ending in a newline is complete. A run of spaces is complete but for its last space, which
    training text glues to the next word ("       " + " return"). Anything else (half a name, a
    number, punctuation) is re-generated whole.
    """
    if not prompt:
        return prompt, b""
    chunks = split(prompt[-TAIL_CHARS:])
    if not chunks or len(chunks[-1]) >= min(len(prompt), TAIL_CHARS):
        return prompt, b""
    last = chunks[-1]
    if last.endswith(("\n", "\r")):
        return prompt, b""
    if last.isspace():
        last = last[-1]
    return prompt[:-len(last)], last.encode("utf-8")


class HealingMasks:
    """Which tokens may come next while `heal` bytes are still to be spelled: those that begin with
    all of them (a contiguous run of the sorted token bytes) or spell a start of them."""

    def __init__(self, token_bytes: list[bytes], vocab_size: int, device: torch.device | str = "cpu"):
        order = sorted((b, i) for i, b in enumerate(token_bytes) if b)
        self.sorted_bytes = [b for b, _ in order]
        self.sorted_ids = torch.tensor([i for _, i in order], dtype=torch.long)
        self.id_of_bytes = {b: i for i, b in enumerate(token_bytes) if b}
        self.vocab_size, self.device = vocab_size, device
        self.masks: dict[bytes, torch.Tensor] = {}

    def __call__(self, heal: bytes) -> torch.Tensor:
        mask = self.masks.get(heal)
        if mask is None:
            mask = self._build(heal).to(self.device)
            if len(self.masks) > 4096:
                self.masks.clear()
            self.masks[heal] = mask
        return mask

    def _build(self, heal: bytes) -> torch.Tensor:
        lo = bisect.bisect_left(self.sorted_bytes, heal)
        hi = (bisect.bisect_left(self.sorted_bytes, _next_prefix(heal), lo) if heal.rstrip(b"\xff")
              else len(self.sorted_bytes))
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if heal.isspace():
            # The user typed exactly this whitespace (indentation, blank lines): a token may finish
            # it but not add more, or the completion would start with extra indentation.
            n = len(heal)
            keep = [i for b, i in zip(self.sorted_bytes[lo:hi], self.sorted_ids[lo:hi].tolist())
                    if len(b) == n or not b[n:n + 1].isspace()]
            mask[keep] = True
        else:
            mask[self.sorted_ids[lo:hi]] = True
        for n in range(1, len(heal)):
            token = self.id_of_bytes.get(heal[:n])
            if token is not None:
                mask[token] = True
        return mask


def _next_prefix(prefix: bytes) -> bytes:
    """The smallest byte string above every string that starts with `prefix` (not all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1])
