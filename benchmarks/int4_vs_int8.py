"""int4 vs int8 batch-1 decode on the Qwen2.5-Coder-0.5B shape (random weights), 2 kernel threads, alternating.

`python -m benchmarks.int4_vs_int8 [ROUNDS]`: each round decodes 32 tokens with each model through the
compiled decode step; prints medians and the share of the memory-bandwidth bound (weight bytes read per
token / measured copy bandwidth). Shares the random model benchmarks/bench_models.py builds."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
import torch
from benchmarks.bench_models import hf_dir
from benchmarks.engine_bench import copy_bandwidth_gbs
from engine import kernels
from engine.fast_decode import FastDecoder
from engine.kv_cache import block_pool_layout
from engine.kv_cache import KVCache
from engine.quantize import Int4Linear, Int8Linear, load_int4_model, load_int8_model


def main() -> None:
    torch.set_grad_enabled(False)
    hf = hf_dir("qwen2-0.5b", Path.home() / ".cache/code-assistant/bench")
    kernels.use_threads(2)
    models = {}
    for name, load in (("int8", load_int8_model), ("int4", load_int4_model)):
        t = time.time(); m, _ = load(hf); print(name, "loaded in", round(time.time() - t, 1), "s", flush=True)
        c = m.config
        cache = KVCache(c.n_layer, 40, 16, c.n_kv_head, c.head_dim, kernel=False)
        fast = FastDecoder.build(m, torch.device("cpu"))
        nbytes = sum(b.numel() * b.element_size() for mod in m.modules() if isinstance(mod, (Int4Linear, Int8Linear))
                     for b in (mod.weight, mod.scale))
        models[name] = (fast, cache, nbytes)
        print(name, "weight bytes read per token", round(nbytes / 2**20, 1), "MiB", flush=True)
    bw = copy_bandwidth_gbs(512)
    print("copy bandwidth", round(bw, 1), "GB/s", flush=True)
    times = {k: [] for k in models}
    for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        for name, (fast, cache, _) in models.items():
            layout = block_pool_layout(cache.k, cache.v)
            table = list(range(1, 33))
            steps = 32
            t = time.perf_counter()
            token = 5
            for p in range(steps):
                logits = fast.forward([[token]], [[p]], layout, [table])
                token = int(logits[0, -1].argmax())
            times[name].append(steps / (time.perf_counter() - t))
        print(rnd, {k: round(v[-1], 1) for k, v in times.items()}, flush=True)
    for name, v in times.items():
        med = statistics.median(v); nbytes = models[name][2]
        print(f"{name}: median {med:.1f} tok/s; bound {bw * 1e9 / nbytes:.1f} tok/s ({med * nbytes / (bw * 1e9):.0%} of it)")


if __name__ == "__main__":
    main()
