"""The token choice for a batch of rows, from each request's SamplingParams (engine/sampling_params.py)."""
from __future__ import annotations

import torch

from .sampling_params import SamplingParams


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                 draft: int | None = None) -> int:
    """Choose the next token from one row of logits (vocab,).

    With a `draft` token (speculative decoding), the token is still distributed exactly as without
    it: the draft is kept with probability p(draft), else a token is drawn from p with the draft
    taken out (speculative sampling, Leviathan et al. 2023, for a draft that proposes one token
    with certainty). Greedy keeps the draft only when it is the argmax.
    """
    if params.greedy:
        return greedy_token(logits)
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


def greedy_token(logits: torch.Tensor) -> int:
    """The index of the largest logit, the first of equal ones (as torch.argmax). On a CPU float32
    row numpy's: torch's reduction pays for waking its OpenMP workers on the scheduler thread
    (a row of 8,192: 16 us against numpy's 2 us, two threads, measured on a loaded 2-core machine)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
        return int(logits.numpy().argmax())
    return int(torch.argmax(logits))


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
