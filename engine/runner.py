"""The model runner: one forward over rows of new tokens, their positions and block tables.

The one place that chooses how a forward runs: the compiled decode step (engine/fast_decode.py,
engine/decode_kernel.c) where it is built and the rows are few queries each and fit its size limit,
else the model's PyTorch forward over a `PagedBatch` of the KV pool. Both read and write the same
pool, so a sequence may take turns between them.

Rows are independent and may differ in length: a short row is padded and `n_real` says how many of
its tokens are real (padding writes to the null block). So one call can carry decode rows (the last
token and a draft) and prefill chunks of other requests side by side.
"""
from __future__ import annotations

import torch

from . import kernels
from .fast_decode import MAX_QUERIES, FastDecoder
from .kv_cache import KVCache
from .model import Transformer


class Runner:
    def __init__(self, model: Transformer, cache: KVCache, device: torch.device, kernels: bool = True):
        self.model, self.cache, self.device = model, cache, device
        self.window = model.config.sliding_window or None
        # Rows of up to this many new tokens run compiled: decode steps always, prompts too where
        # the scheduler measured the compiled step no slower for them (Scheduler._measure_compiled_prefill).
        self.max_queries = MAX_QUERIES
        # The C kernels' threads: `threads` for a forward of at least `all_threads_from` new tokens,
        # one for a shorter one (Scheduler._measure_kernel_threads sets both).
        self.threads, self.all_threads_from = 1, 1
        self.kernels_on = kernels  # False: no compiled kernel is even loaded (EngineConfig.kernels)
        self.compiled: FastDecoder | None = None
        reason = "EngineConfig.kernels is False" if not kernels else FastDecoder.unavailable(model, device)
        if reason is None:
            self.compiled = FastDecoder(model)
            self._layout = cache.layout()
        else:
            FastDecoder.log_off(reason)
        # What /health and the start log show: which decode path is live, and why not the compiled one.
        self.decode_path = {"kernels": "c" if self.compiled is not None else "pytorch", "reason": reason}

    def forward(self, idx: list[list[int]], positions: list[list[int]], tables: list[list[int]],
                n_real: list[int] | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) of each row's last real token with last_only, for
        B rows of T token ids at `positions` (row b: its sequence's blocks tables[b], its first
        n_real[b] tokens real); their keys and values go into the pool."""
        threads = self.threads if len(idx) * len(idx[0]) >= self.all_threads_from else 1
        kernels.use_threads(threads)
        try:
            return self._forward(idx, positions, tables, n_real, last_only)
        finally:
            if threads > 1 and self.kernels_on:
                kernels.rest()

    def _forward(self, idx, positions, tables, n_real, last_only) -> torch.Tensor:
        compiled = self.compiled
        if compiled is not None and len(idx[0]) <= self.max_queries and len(idx) * len(idx[0]) <= compiled.max_rows:
            return compiled.forward(idx, positions, self._layout, tables, n_real, last_only)
        positions_t = torch.tensor(positions, device=self.device)
        batch = self.cache.batch(tables, positions_t, n_real, self.window)
        return self.model(torch.tensor(idx, device=self.device), positions_t, batch, last_only=last_only)
