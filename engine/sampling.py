"""Sampling parameters (validated on construction) and the token choice for a batch of rows."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


# Sampling runs in float32: a positive temperature or top_p below its smallest normal number rounds
# to 0 (or to a denormal that flush-to-zero makes 0), and dividing by it gives inf and NaN.
SMALLEST_POSITIVE = float(torch.finfo(torch.float32).tiny)


class SamplingError(ValueError):
    """Invalid sampling parameters; the message names the field and the allowed range, `field` names it alone."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SamplingParams:
    max_tokens: int = 50
    temperature: float = 0.0       # 0: greedy (deterministic)
    top_k: int | None = None
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None        # with temperature > 0: the same seed gives the same tokens
    cache_weight: float | None = None  # the context cache model's weight: None = default, 0 = off
    # OpenAI's: each generated token's logit is lowered by frequency_penalty times how often it was
    # generated so far, plus presence_penalty once it was generated at all. In [-2, 2].
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_loops: bool | None = None     # stop where the text starts repeating (engine/repetition.py); None = default

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, (list, tuple)):
            self.stop = list(self.stop)
        else:
            raise SamplingError(f"stop must be a string or a list of strings, got {type(self.stop).__name__}",
                                "stop")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise SamplingError(f"max_tokens must be a positive integer, got {self.max_tokens!r}", "max_tokens")
        if (not _is_number(self.temperature) or not 0.0 <= self.temperature <= 5.0
                or 0.0 < self.temperature < SMALLEST_POSITIVE):
            raise SamplingError(f"temperature must be 0 (greedy) or a number in [{SMALLEST_POSITIVE:.3g}, 5], "
                                f"got {self.temperature!r}", "temperature")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise SamplingError(f"top_k must be a positive integer or None, got {self.top_k!r}", "top_k")
        if not _is_number(self.top_p) or not SMALLEST_POSITIVE <= self.top_p <= 1.0:
            raise SamplingError(f"top_p must be a number in [{SMALLEST_POSITIVE:.3g}, 1], got {self.top_p!r}", "top_p")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}", "stop")
        if any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise SamplingError(f"stop must be non-empty strings of at most {MAX_STOP_CHARS} characters", "stop")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise SamplingError(f"seed must be a non-negative integer below 2**63, got {self.seed!r}", "seed")

        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2.0 <= value <= 2.0:
                raise SamplingError(f"{name} must be a number in [-2, 2], got {value!r}", name)
        if self.stop_loops is not None and not isinstance(self.stop_loops, bool):
            raise SamplingError(f"stop_loops must be true, false or None, got {self.stop_loops!r}", "stop_loops")
        if self.cache_weight is not None and (not _is_number(self.cache_weight) or not 0.0 <= self.cache_weight <= 1.0):
            raise SamplingError(f"cache_weight must be a number in [0, 1] or None, got {self.cache_weight!r}",
                                "cache_weight")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                 draft: int | None = None) -> int:
    """Choose the next token from one row of logits (vocab,).

    With a `draft` token (speculative decoding), the token is still distributed exactly as without
    it: the draft is kept with probability p(draft), else a token is drawn from p with the draft
    taken out (speculative sampling, Leviathan et al. 2023, for a draft that proposes one token
    with certainty). Greedy keeps the draft only when it is the argmax.
    """
    if params.greedy:
        return int(torch.argmax(logits))
    # Scaled after subtracting the maximum: every scaled logit is <= 0, so a small temperature
    # drives the others towards -inf (probability 0) instead of overflowing to inf (NaN after softmax).
    logits = logits.float()
    logits = (logits - logits.max()) / params.temperature
    if params.top_k is not None and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < params.top_p
        keep[0] = True  # the most likely token stays however small top_p is (rounding cannot drop it)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs * keep)
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)  # per-request generators live on the CPU
    if draft is not None:
        if float(torch.rand((), generator=generator)) * float(probs.sum()) < float(probs[draft]):  # top-p left it unnormalised
            return draft
        probs[draft] = 0.0
    return int(torch.multinomial(probs, 1, generator=generator))


def apply_penalties(logits: torch.Tensor, params: SamplingParams, generated: list[int]) -> None:
    """OpenAI's frequency and presence penalties on one row, in place, from the tokens generated so far."""
    if not generated or (params.frequency_penalty == 0.0 and params.presence_penalty == 0.0):
        return
    ids, counts = torch.unique(torch.tensor(generated, dtype=torch.long), return_counts=True)
    ids = ids.to(logits.device)
    penalty = counts.to(device=logits.device, dtype=logits.dtype) * params.frequency_penalty + params.presence_penalty
    logits[ids] -= penalty


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                  generated: list[list[int]] | None = None) -> list[int]:
    """One token per row of (B, vocab) logits: one argmax call for all greedy rows, then the sampled
    rows. `generated`: each row's tokens so far, for the penalties."""
    if generated is not None:
        for i, p in enumerate(params):
            apply_penalties(logits[i], p, generated[i])
    greedy = torch.argmax(logits, dim=-1).tolist()
    return [greedy[i] if p.greedy else sample_token(logits[i], p, generators[i]) for i, p in enumerate(params)]
