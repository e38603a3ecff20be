"""How fast this model prefills a prompt on this machine, timed once when the engine starts: the
prompt's suffix budget follows from it (engine/prompt.py suffix_budget)."""
from __future__ import annotations

import logging
import time

import torch

from .model import Transformer

log = logging.getLogger("engine")
PROBE_TOKENS = 32     # a prompt's worth of new tokens at one keystroke: the tail and a short suffix
PROBE_BUDGET_S = 1.0  # timing stops after this much (a large model's forward is tried once a thread count)


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
