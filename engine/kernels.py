"""Compiled CPU kernels: C files beside this module, loaded with ctypes; the PyTorch path runs where they cannot be.

Where a kernel comes from, first that exists:
1. A prebuilt copy in engine/prebuilt/, compiled when the wheel was built (setup.py runs `build_prebuilt`):
   one per portable CPU level of VARIANTS, and the loader takes the best level /proc/cpuinfo's flags
   allow. So `pip install` of a wheel gives the compiled path on a machine (or a slim Docker image)
   without a compiler, and the server a user installs is the one the benchmarks measure.
2. Compiled at first use from the shipped source (`cc -O3 -march=native ...`, a few seconds) into
   ~/.cache/code-assistant (or $CODE_ASSISTANT_CACHE), named by a hash of the source, the flags and
   the CPU: a checkout (editable install), or a machine none of the prebuilt levels fits.
3. Neither (no compiler, no source, a failed build or load) or CODE_ASSISTANT_NO_KERNELS set:
   `library()` returns None and logs why in one line; callers run their PyTorch path (the tests run both).
The C code has AVX-512 VNNI paths, AVX2 paths and plain C beside them, chosen by the compiler's -march.
setup.py loads this file alone (no package, no torch): keep its imports to the standard library.
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
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("engine")

HERE = Path(__file__).parent
PREBUILT = HERE / "prebuilt"
LINK = ("-shared", "-fPIC")
# Every kernel: engine/<name>.c and its compiler flags, without -march (the variant or `native` adds it).
KERNELS: dict[str, tuple[str, ...]] = {
    # No -ffast-math and no FMA contraction: the int8 matmul must round exactly as its PyTorch twin.
    "decode_kernel": ("-O3", "-ffp-contract=off", "-fopenmp-simd", "-pthread"),
}
_V2 = frozenset({"sse4_1", "sse4_2", "ssse3", "popcnt", "cx16"})
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm"}
# The prebuilt CPU levels of each machine type, best first: (name, -march flags, /proc/cpuinfo flags it needs).
# x86-64-v4 is AVX-512 F/BW/CD/DQ/VL; the kernel's int8 dot products want VNNI on top.
VARIANTS: dict[str, tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]] = {
    "x86_64": (
        ("x86-64-v4-vnni", ("-march=x86-64-v4", "-mavx512vnni"),
         _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni"}),
        ("x86-64-v3", ("-march=x86-64-v3",), _V3),
        ("x86-64-v2", ("-march=x86-64-v2",), _V2),
    ),
}
GENERIC = (("generic", (), frozenset()),)  # other machines: the compiler's baseline for the architecture


def variants(machine: str | None = None) -> tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]:
    return VARIANTS.get(machine or platform.machine(), GENERIC)


def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(line for line in lines if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def find_compiler(compiler: str | None = None) -> str | None:
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return compiler if compiler and shutil.which(compiler) else None


def compile_kernel(compiler: str, source: Path, flags: tuple[str, ...], out: Path) -> str:
    """Compile `source` into the shared library `out`; "" or why it failed (one line)."""
    try:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # several processes may build at once
            part = Path(tmp) / out.name
            subprocess.run([compiler, *flags, *LINK, str(source), "-o", str(part), "-lm"], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(part, out)
    except subprocess.CalledProcessError as e:
        return f"{compiler} failed on {source.name}: {' '.join((e.stderr or '').split())[-400:]}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"building {source.name} failed: {e}"
    return ""


def build(source: Path, flags: tuple[str, ...] | None = None, compiler: str | None = None) -> tuple[Path | None, str]:
    """The shared library compiled from `source` with `flags` (default: its KERNELS entry for this
    machine's CPU), built now unless cached; or None and the reason."""
    flags = flags if flags is not None else (*KERNELS.get(source.stem, ()), "-march=native")
    found = find_compiler(compiler)
    if found is None:
        return None, f"no C compiler found ({compiler or os.environ.get('CC') or 'cc'})"
    try:
        key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + _cpu_name().encode()).hexdigest()[:16]
        cache = Path(os.environ.get("CODE_ASSISTANT_CACHE", Path.home() / ".cache" / "code-assistant"))
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, f"cannot build {source.name}: {e}"
    built = cache / f"{source.stem}-{key}.so"
    if built.exists():
        return built, ""
    reason = compile_kernel(found, source, flags, built)
    return (None, reason) if reason else (built, "")


def build_prebuilt(out: Path, compiler: str | None = None, machine: str | None = None) -> list[str]:
    """Every kernel at every CPU level of this machine type, into `out` (setup.py calls this when the
    wheel is built); the problems, one line each (empty when all built)."""
    found = find_compiler(compiler)
    if found is None:
        return [f"no C compiler found ({compiler or os.environ.get('CC') or 'cc'})"]
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, variant, (*flags, *march)) for name, flags in KERNELS.items() for variant, march, _ in variants(machine)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each a compiler process: ~3 s
        reasons = pool.map(lambda job: compile_kernel(found, HERE / f"{job[0]}.c", job[2], out / f"{job[0]}-{job[1]}.so"),
                           jobs)
        return [f"{name} ({variant}): {reason}" for (name, variant, _), reason in zip(jobs, reasons) if reason]


def prebuilt(name: str, have: frozenset[str], directory: Path = PREBUILT, machine: str | None = None) -> Path | None:
    """The best prebuilt library of `name` a CPU with the /proc/cpuinfo flags `have` can run, if any."""
    for variant, _, needs in variants(machine):
        path = directory / f"{name}-{variant}.so"
        if needs <= have and path.is_file():
            return path
    return None


def locate(name: str) -> tuple[Path | None, str]:
    """Where engine/<name>.c's library is for this CPU (prebuilt, else built now), or None and the reason."""
    path = prebuilt(name, cpu_flags())
    if path is not None:
        return path, ""
    source = HERE / f"{name}.c"
    if not source.is_file():
        return None, f"no prebuilt {name} for this CPU and no source {source}"
    return build(source)


_unavailable: dict[str, str] = {}
_said: set[str] = set()


def unavailable(name: str) -> str | None:
    """Why engine/<name>.c is not loaded (after `library(name)` returned None), else None."""
    return _unavailable.get(name)


@lru_cache(maxsize=None)
def library(name: str) -> ctypes.CDLL | None:
    """engine/<name>.c, loaded; None (logged once, in one line) where it cannot be."""
    if os.environ.get("CODE_ASSISTANT_NO_KERNELS"):
        _unavailable[name] = "CODE_ASSISTANT_NO_KERNELS is set"
        log.info("%s runs in PyTorch: %s", name, _unavailable[name])
        return None
    path, reason = locate(name)
    if path is not None:
        try:
            lib = ctypes.CDLL(str(path))
            log.debug("%s: %s", name, path)
            return lib
        except OSError as e:
            reason = f"loading {path} failed: {e}"
    _unavailable[name] = reason
    # One line per cause: a missing compiler is said once, not once per kernel.
    log.log(logging.DEBUG if reason in _said else logging.WARNING, "%s runs in PyTorch: %s", name, reason)
    _said.add(reason)
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


def rest() -> None:
    """The forward is over: the C kernels' helper threads sleep now instead of spinning a while
    (decode_kernel.c `pool_rest`)."""
    lib = decode_kernel()
    if lib is not None:
        lib.pool_rest()


# ---- engine/decode_kernel.c: its structs (the same fields in the same order) and functions ------
i64, f32p, ptr = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p


class QLinear(ctypes.Structure):
    _fields_ = [("w", ptr), ("scale", ptr), ("wsum", ptr), ("bias", ptr), ("n", i64), ("k", i64),
                ("bits", i64),  # 0 (int8) or 4 (engine/quantize.py's Int4Linear)
                ("packed", ptr)]  # int8: the weights in panels for many rows (Int8Linear.pack), or None


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
    return declare(lib) if lib is not None else None


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """decode_kernel.c's functions in `lib` with their C signatures."""
    lib.int8_linear.argtypes = [ptr, i64, ctypes.POINTER(QLinear), ptr, i64]
    lib.int8_linear.restype = None
    lib.int4_linear.argtypes = [ptr, i64, ctypes.POINTER(QLinear), ptr, i64]
    lib.int4_linear.restype = None
    lib.decode_forward.argtypes = [ctypes.POINTER(ModelWeights), ptr, ptr, i64, i64, ptr,
                                   ctypes.POINTER(KVLayout), ptr, i64, ptr, i64, i64]
    lib.decode_forward.restype = ctypes.c_int
    lib.decode_profile.argtypes = [i64, ptr]
    lib.decode_profile.restype = None
    lib.pool_rest.argtypes = []
    lib.pool_rest.restype = None
    lib.paged_attention.argtypes = [ctypes.POINTER(KVLayout), i64, ptr, i64, ptr, i64, i64, ptr, ptr, i64,
                                    i64, i64, i64, i64, ptr, i64]
    lib.paged_attention.restype = None
    return lib


def address(t) -> int | None:
    return None if t is None else t.data_ptr()


PROFILE_PHASES = ("embed", "norm", "qkv", "rope_store", "attention", "out", "up", "act", "down", "head")


def decode_profile(lib: ctypes.CDLL, on: bool) -> dict[str, int]:
    """Start (zeroed) or stop the kernel's per-phase cycle counters; returns the cycles so far."""
    out = (ctypes.c_uint64 * len(PROFILE_PHASES))()
    lib.decode_profile(int(on), out)
    return dict(zip(PROFILE_PHASES, out))


if __name__ == "__main__":  # `python -m engine.kernels`: build or find every kernel now (make test does)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in KERNELS:
        lib = library(name)
        print(f"engine/{name}.c: {lib._name if lib is not None else 'not loaded, the PyTorch path runs (reason above)'}")
