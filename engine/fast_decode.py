"""A decode step of an int8 model in one call: engine/decode_kernel.c's `decode_forward`.

Eager PyTorch spends a small model's decode step in per-op overhead (the shipped 4 x 192 model:
~540 dispatcher calls and 1.4 ms of CPU a token; the kernel takes ~0.25 ms), and a larger one in
reading weights through a matmul that was not made for one row. `FastDecoder` hands the C
kernel pointers to the model's own int8 buffers once (no copy) and then runs embedding, blocks and
head for a few tokens per row, reading and writing the engine's KV cache where it lies.

It is an optimisation, never a different model: the same int8 arithmetic as `Int8Linear` (and int4
as `Int4Linear`; bit for bit in the matmuls), tested token for token against the PyTorch forward. `FastDecoder.build`
returns None, with the reason logged, for anything it does not cover (float weights, CUDA, a
model whose layers are not `Int8Linear`, no compiler); the engine then runs the model's forward.
"""
from __future__ import annotations

import ctypes
import logging

import numpy as np
import torch

from . import kernels
from .model import Transformer
from .quantize import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear

log = logging.getLogger("engine")

ACTIVATION_CODES = {"gelu_tanh": 0, "gelu": 1, "silu": 2, "relu": 3}
# Multiply-adds a call may take (rows x int8 weights): beyond, a step is compute-bound and oneDNN's
# int8 GEMM (AMX where the CPU has it) behind the PyTorch forward does more. Measured, one thread,
# on a machine with AMX: the 0.5B shape (494 M weights) at 16 rows 160 vs 210 ms a step here, at
# 64 rows 435 vs 301; the shipped model (3.3 M) at 64 rows 13 vs 18 ms. So about 32 rows of the
# 0.5B shape. int4 weights do not count: the PyTorch forward multiplies them with the same kernel,
# and around it pays for ~25 operations a layer (the 0.5B shape, int4, a 32-token prompt after
# 1,000 cached: 96 ms here, 172 ms through PyTorch).
MAX_STEP_MACS = 16e9
# Models with at most this many int8 weights keep a second copy packed for steps of many rows
# (decode_kernel.c gemm_packed: the shipped model's 128-token prompt ~2x faster); a bigger model
# would double a large footprint, and its prompts run in PyTorch's matmuls anyway.
PACK_MAX_WEIGHTS = 64 * 2**20
MAX_QUERIES = 16  # new tokens a row; a longer prompt is prefilled by the PyTorch forward


class FastDecoder:
    def __init__(self, model: Transformer, lib: ctypes.CDLL | None = None):
        self.model, self.lib, c = model, lib or kernels.decode_kernel(), model.config
        self._keep: list[torch.Tensor] = []  # every tensor the structs point into stays alive

        def ptr(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            t = t.detach().float().contiguous() if t.is_floating_point() else t.contiguous()
            self._keep.append(t)
            return t.data_ptr()

        def norm(module) -> tuple[int | None, int | None]:
            return ptr(module.weight), ptr(getattr(module, "bias", None))

        int8_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, Int8Linear))
        pack = int8_weights <= PACK_MAX_WEIGHTS

        def linear(module: Int8Linear | Int4Linear) -> kernels.QLinear:
            self._keep.append(module)
            if pack and isinstance(module, Int8Linear) and module.packed is None:
                module.pack()
            return module.native()

        layers = (kernels.LayerWeights * c.n_layer)()
        for i, block in enumerate(model.layers):
            layers[i] = kernels.LayerWeights(*norm(block.attn_norm), *norm(block.mlp_norm), linear(block.attn.qkv),
                                             linear(block.attn.out), linear(block.mlp.up), linear(block.mlp.down))
        pos = model.pos_embed
        # an int4 embedding is the tied head's table: the kernel looks its rows up there
        embed = model.embed if isinstance(model.embed, Int8Embedding) else None
        rope = c.position == "rope"
        self.weights = kernels.ModelWeights(
            c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.intermediate_size, c.vocab_size,
            c.block_size, int(c.norm == "rmsnorm"), c.norm_eps, ACTIVATION_CODES[c.activation],
            int(c.mlp == "swiglu"), c.sliding_window, ptr(embed.weight if embed else None), ptr(embed.scale if embed else None),
            ptr(pos.weight) if pos is not None else None, ptr(pos.scale) if pos is not None else None,
            ptr(model.rope_cos) if rope else None, ptr(model.rope_sin) if rope else None, *norm(model.norm),
            linear(model.head), layers)
        self._layers = layers
        weights = sum(m.in_features * m.out_features for m in self._keep if isinstance(m, Int8Linear))
        # the engine runs bigger steps in PyTorch
        self.max_rows = max(1, int(MAX_STEP_MACS // weights)) if weights else 1 << 30

    @classmethod
    def build(cls, model: Transformer, device: torch.device) -> "FastDecoder | None":
        """The compiled decode step for this model, or None (logged) where it does not apply."""
        reason = cls.unavailable(model, device)
        if reason is not None:
            cls.log_off(reason)
            return None
        return cls(model)

    @staticmethod
    def unavailable(model: Transformer, device: torch.device) -> str | None:
        """Why the compiled decode step cannot run this model here, or None when it can."""
        if device.type != "cpu":
            return f"it runs on the CPU only (device {device})"
        if kernels.decode_kernel() is None:  # first: without the library no layer has its kernel either
            return kernels.unavailable("decode_kernel") or "the kernel did not build (the log says why)"
        if not all(isinstance(m, (Int8Linear, Int4Linear)) and m.kernel is not None
                   for m in [model.head] + [l for b in model.layers for l in (b.attn.qkv, b.attn.out, b.mlp.up, b.mlp.down)]):
            return "the model's linear layers are not int8 or int4 with the compiled kernel"
        tied_int4 = (isinstance(model.embed, Int4Embedding) and isinstance(model.head, Int4Linear)
                     and model.embed.weight.data_ptr() == model.head.weight.data_ptr())
        if not (isinstance(model.embed, Int8Embedding) or tied_int4) or (
                model.pos_embed is not None and not isinstance(model.pos_embed, Int8Embedding)):
            return "the embeddings are not int8 (nor the int4 head's table)"
        if model.config.activation not in ACTIVATION_CODES:
            return f"activation {model.config.activation} is not in the kernel"
        return None

    @staticmethod
    def log_off(reason: str) -> None:
        log.info("fast decode off: %s; decoding through the model's PyTorch forward", reason)

    def forward(self, idx: list[list[int]], positions: list[list[int]], layout: kernels.KVLayout,
                tables: list[list[int]], n_real: list[int] | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) with last_only, of B rows of T new tokens at
        `positions`, whose keys and values are written into and read from the cache `layout`
        describes (row b's position p in block tables[b][p // block_tokens])."""
        B, T = len(idx), len(idx[0])
        width = max(len(t) for t in tables)
        # numpy builds the arrays in C; ctypes arrays from Python ints took ~0.2 ms a 32-row step
        idx_a, pos_a = np.array(idx, dtype=np.int64), np.array(positions, dtype=np.int64)
        tables_a = np.array([t + [0] * (width - len(t)) for t in tables], dtype=np.int64)
        n_real_a = np.array(n_real, dtype=np.int64) if n_real is not None else None
        logits = torch.empty(B, 1 if last_only else T, self.model.config.vocab_size)
        rc = self.lib.decode_forward(ctypes.byref(self.weights), idx_a.ctypes.data, pos_a.ctypes.data, B, T,
                                     n_real_a.ctypes.data if n_real_a is not None else None, ctypes.byref(layout),
                                     tables_a.ctypes.data, width, logits.data_ptr(), int(last_only),
                                     kernels.threads())
        if rc != 0:
            raise ValueError(f"token ids or positions out of the model's range (vocab {self.model.config.vocab_size}, "
                             f"{self.model.config.block_size} positions)")
        return logits

