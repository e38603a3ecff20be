"""Builds and calls paged_attention.c: few-query attention straight over the pool's blocks.

The C file is compiled once per machine with the system C compiler (`cc -O3 -march=native
-fopenmp` and the reassociation flags a vectorised sum needs, about a second) into
~/.cache/code-assistant (or $CODE_ASSISTANT_CACHE), named by a hash of the source, flags and CPU,
and loaded with ctypes. Never -ffast-math: a shared library built with it turns on flush-to-zero
for the whole process when loaded (measured: Python's 5e-324 > 0 became False), changing every
other computation. Without a compiler, or when the build fails, `library()` is None and the KV
cache uses its pure PyTorch path (the tests run both).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("engine")

SOURCE = Path(__file__).with_name("paged_attention.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-freciprocal-math", "-fopenmp", "-shared", "-fPIC"]
MAX_HEAD_DIM = 256


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    if os.environ.get("CODE_ASSISTANT_NO_KERNELS"):
        return None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: paged attention runs in PyTorch")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_name().encode()).hexdigest()[:16]
    cache = Path(os.environ.get("CODE_ASSISTANT_CACHE", Path.home() / ".cache" / "code-assistant"))
    built = cache / f"paged_attention-{key}.so"
    try:
        if not built.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # several processes may build at once
                out = Path(tmp) / built.name
                subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(out), "-lm"], check=True,
                               capture_output=True, timeout=120)
                os.replace(out, built)
        lib = ctypes.CDLL(str(built))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("building the paged attention kernel failed, using PyTorch: %s", e)
        return None
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
