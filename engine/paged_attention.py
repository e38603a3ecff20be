"""Calls paged_attention.c: few-query attention straight over the pool's blocks.

Built and loaded like every kernel here, with the flags engine/kernels.py's KERNELS table gives it.
Where it cannot be, `library()` is None and the KV cache uses its pure PyTorch path (the tests run both).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import torch

from . import kernels

MAX_HEAD_DIM = 256


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    lib = kernels.library("paged_attention")
    if lib is not None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.paged_attention.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr] + [i64] * 8
        lib.paged_attention.restype = None
    return lib


def paged_attention(lib: ctypes.CDLL, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_scale: torch.Tensor | None, v_scale: torch.Tensor | None, tables: torch.Tensor,
                    positions: torch.Tensor, n_real: torch.Tensor, window: int | None) -> torch.Tensor:
    """q (B, H, T, D) float32 over one layer's pool k, v (n_blocks, bs, H_kv, D); see the C file."""
    q = q.contiguous()
    B, H, T, D = q.shape
    out = torch.empty_like(q)
    address = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    lib.paged_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), address(k_scale), address(v_scale),
                        tables.data_ptr(), tables.shape[1], positions.data_ptr(), n_real.data_ptr(), out.data_ptr(),
                        B, H, k.shape[2], T, D, k.shape[1], window or 0, torch.get_num_threads())
    return out
