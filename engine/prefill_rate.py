"""How fast this model prefills a prompt on this machine, timed once when the engine starts: the
prompt's suffix budget follows from it (engine/prompt.py suffix_budget), and how many prompt tokens
a scheduler step forwards (`step_tokens`)."""
from __future__ import annotations

import logging
import time

import torch

from .model import Transformer

log = logging.getLogger("engine")
PROBE_TOKENS = 32     # a prompt's worth of new tokens at one keystroke: the tail and a short suffix
PROBE_BUDGET_S = 1.0  # timing stops after this much (a large model's forward is tried once a thread count)
# A step's prompt tokens take about this long at most: the running sequences wait that long for
# their next token while a long prompt is prefilled (a 0.5B model on 2 cores, another user's cold
# 1,500-token prompt: a decoding user's longest wait for a token 4.2-4.7 s with the prompt whole,
# 0.27-0.31 s with this budget, 64 tokens there).
STEP_PREFILL_S = 0.25
# 64: fewer rows would spend a forward's fixed costs on little work; 512: the chunk prompts were
# prefilled in before the budget (the shipped model's whole context, twice over).
MIN_STEP_TOKENS, MAX_STEP_TOKENS = 64, 512


def prefill_tokens_per_s(model: Transformer, device: torch.device) -> float | None:
    """Prompt tokens a second through the model's plain forward at PROBE_TOKENS a forward, or None
    when the forward fails. The best of a few tries (the first pays for warming up) at one thread
    and at all of them: a small model's forward runs faster at one (Scheduler._measure_pytorch_threads)."""
    tokens = min(PROBE_TOKENS, model.config.block_size)
    idx = torch.zeros(1, tokens, dtype=torch.long, device=device)
    threads = torch.get_num_threads()
    best, spent = float("inf"), 0.0
    try:
        with torch.no_grad():
            for n in (threads, 1, threads, 1):
                torch.set_num_threads(n)
                start = time.perf_counter()
                model(idx, last_only=True)[0, -1, 0].item()  # .item() waits for an accelerator
                took = time.perf_counter() - start
                best, spent = min(best, took), spent + took
                if spent > PROBE_BUDGET_S:
                    break
    except Exception:  # a model that cannot run a plain forward fails its requests, not the start
        log.exception("timing the prefill failed; the suffix is not limited by it")
        return None
    finally:
        torch.set_num_threads(threads)
    log.info("prefill: %d tokens in %.1f ms (%.0f tokens/s)", tokens, best * 1e3, tokens / best)
    return tokens / best


def step_tokens(prefill_tokens_per_s: float | None) -> int:
    """Prompt tokens a scheduler step forwards at most on a machine that prefills this many a second:
    STEP_PREFILL_S's worth, in steps of MIN_STEP_TOKENS (stable across restarts), within
    [MIN_STEP_TOKENS, MAX_STEP_TOKENS]; the most where the rate is unknown."""
    if not prefill_tokens_per_s:
        return MAX_STEP_TOKENS
    steps = int(prefill_tokens_per_s * STEP_PREFILL_S) // MIN_STEP_TOKENS
    return min(MAX_STEP_TOKENS, max(1, steps) * MIN_STEP_TOKENS)
