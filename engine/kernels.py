"""Compiled CPU kernels: C files beside this module, built at first use with the machine's compiler.

A source is compiled once per machine (`cc -O3 -march=native ...`, a few seconds) into
~/.cache/code-assistant (or $CODE_ASSISTANT_CACHE), named by a hash of the source, the flags and
the CPU, and loaded with ctypes. Without a compiler, when the build fails, or with
CODE_ASSISTANT_NO_KERNELS set, `library()` returns None and logs why once; callers then run their
PyTorch path (the tests run both). The C code has AVX-512 VNNI paths and plain C beside them.
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
import threading
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("engine")

HERE = Path(__file__).parent
# No -ffast-math and no FMA contraction: the int8 matmul must round exactly as its PyTorch twin.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp-simd", "-pthread", "-shared", "-fPIC"]


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(line for line in lines if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def build(source: Path, flags: tuple[str, ...] = tuple(FLAGS), compiler: str | None = None) -> tuple[Path | None, str]:
    """The shared library compiled from `source` with `flags` (built now unless cached), or None and the reason."""
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which(compiler) is None:
        return None, f"no C compiler found ({compiler or 'cc'})"
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + _cpu_name().encode()).hexdigest()[:16]
    cache = Path(os.environ.get("CODE_ASSISTANT_CACHE", Path.home() / ".cache" / "code-assistant"))
    built = cache / f"{source.stem}-{key}.so"
    if built.exists():
        return built, ""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # several processes may build at once
            out = Path(tmp) / built.name
            subprocess.run([compiler, *flags, str(source), "-o", str(out), "-lm"], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(out, built)
    except subprocess.CalledProcessError as e:
        return None, f"{compiler} failed on {source.name}: {(e.stderr or '').strip()[-400:]}"
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"building {source.name} failed: {e}"
    return built, ""


@lru_cache(maxsize=None)
def library(name: str, flags: tuple[str, ...] = tuple(FLAGS)) -> ctypes.CDLL | None:
    """engine/<name>.c, built and loaded; None (logged once) where it cannot be."""
    if os.environ.get("CODE_ASSISTANT_NO_KERNELS"):
        log.info("CODE_ASSISTANT_NO_KERNELS is set: %s runs in PyTorch", name)
        return None
    path, reason = build(HERE / f"{name}.c", flags)
    if path is None:
        log.warning("%s runs in PyTorch: %s", name, reason)
        return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("%s runs in PyTorch: loading %s failed: %s", name, path, e)
        return None


_threads = threading.local()


def threads() -> int:
    """Threads the C kernels' own pool runs with: what the calling thread set with `use_threads`
    (the engine's scheduler does), else torch's count."""
    n = getattr(_threads, "n", None)
    if n is None:
        import torch

        n = torch.get_num_threads()
    return n


def use_threads(n: int | None) -> None:
    """Set (None: unset) this thread's kernel thread count, apart from torch's own."""
    _threads.n = n


# ---- engine/decode_kernel.c: its structs (the same fields in the same order) and functions ------
i64, f32p, ptr = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p


class QLinear(ctypes.Structure):
    _fields_ = [("w", ptr), ("scale", ptr), ("wsum", ptr), ("bias", ptr), ("n", i64), ("k", i64),
                ("bits", i64)]  # 0 (int8) or 4 (engine/quantize.py's Int4Linear)


class LayerWeights(ctypes.Structure):
    _fields_ = [("attn_norm_w", ptr), ("attn_norm_b", ptr), ("mlp_norm_w", ptr), ("mlp_norm_b", ptr),
                ("qkv", QLinear), ("out", QLinear), ("up", QLinear), ("down", QLinear)]


class ModelWeights(ctypes.Structure):
    _fields_ = [("n_layer", i64), ("n_embd", i64), ("n_head", i64), ("n_kv_head", i64), ("head_dim", i64),
                ("intermediate", i64), ("vocab", i64), ("block_size", i64), ("rms_norm", i64),
                ("norm_eps", ctypes.c_float), ("activation", i64), ("gated", i64), ("sliding_window", i64),
                ("embed", ptr), ("embed_scale", ptr), ("pos_embed", ptr), ("pos_scale", ptr),
                ("rope_cos", ptr), ("rope_sin", ptr), ("norm_w", ptr), ("norm_b", ptr), ("head", QLinear),
                ("layers", ctypes.POINTER(LayerWeights))]


class KVLayout(ctypes.Structure):
    _fields_ = [("k", ptr), ("v", ptr), ("k_scale", ptr), ("v_scale", ptr),
                ("layer_stride", i64), ("block_stride", i64), ("token_stride", i64), ("head_stride", i64),
                ("s_layer_stride", i64), ("s_block_stride", i64), ("s_token_stride", i64), ("s_head_stride", i64),
                ("block_tokens", i64), ("int8", i64)]


@lru_cache(maxsize=1)
def decode_kernel() -> ctypes.CDLL | None:
    lib = library("decode_kernel")
    if lib is not None:
        lib.int8_linear.argtypes = [ptr, i64, ctypes.POINTER(QLinear), ptr, i64]
        lib.int8_linear.restype = None
        lib.int4_linear.argtypes = [ptr, i64, ctypes.POINTER(QLinear), ptr, i64]
        lib.int4_linear.restype = None
        lib.decode_forward.argtypes = [ctypes.POINTER(ModelWeights), ptr, ptr, i64, i64, ptr,
                                       ctypes.POINTER(KVLayout), ptr, i64, ptr, i64, i64]
        lib.decode_forward.restype = ctypes.c_int
        lib.decode_profile.argtypes = [i64, ptr]
        lib.decode_profile.restype = None
    return lib


def address(t) -> int | None:
    return None if t is None else t.data_ptr()


PROFILE_PHASES = ("embed", "norm", "qkv", "rope_store", "attention", "out", "up", "act", "down", "head")


def decode_profile(lib: ctypes.CDLL, on: bool) -> dict[str, int]:
    """Start (zeroed) or stop the kernel's per-phase cycle counters; returns the cycles so far."""
    out = (ctypes.c_uint64 * len(PROFILE_PHASES))()
    lib.decode_profile(int(on), out)
    return dict(zip(PROFILE_PHASES, out))


if __name__ == "__main__":  # `python -m engine.kernels`: build now (make test does, before the tests)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from . import paged_attention

    for name, lib in (("decode_kernel", decode_kernel()), ("paged_attention", paged_attention.library())):
        print(f"engine/{name}.c: {lib._name if lib is not None else 'not built, the PyTorch path runs (reason above)'}")
