"""`code-assistant bench profile`: where a batch-1 decode step of the int8 engine spends its time.

Two paths over the same model and KV cache: the model's PyTorch forward (kernels off: what ran
before engine/decode_kernel.c) under torch.profiler, by operator; and the one-call decode step,
by phase (the kernel's own counters of the calling thread's CPU time). CPU time, not wall time, so
that the other work of a shared machine does not count; both are printed per token.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def run(model_dir: str, tokens: int, threads: int, context: int) -> dict:
    from engine import kernels
    from engine.fast_decode import FastDecoder
    from engine.kv_cache import block_pool_layout
    from engine.kv_cache import KVCache
    from engine.quantize import load_int8_model

    torch.set_grad_enabled(False)
    torch.set_num_threads(threads)
    report: dict = {"model": model_dir, "threads": threads, "context_tokens": context}
    for use_kernels in (False, True):
        model, _ = load_int8_model(model_dir, use_kernels=use_kernels)
        c = model.config
        context = min(context, c.block_size - 2 * tokens - 8)
        report["context_tokens"] = context
        bt = 16
        cache = KVCache(c.n_layer, c.block_size // bt + 2, bt, c.n_kv_head, c.head_dim)
        table = list(range(1, c.block_size // bt + 2))
        prompt = [(7 * i) % c.vocab_size for i in range(context)]
        pos = torch.arange(context).unsqueeze(0)
        model(torch.tensor([prompt]), pos, cache.batch([table], pos), last_only=True)
        fast = FastDecoder.build(model, torch.device("cpu")) if use_kernels else None
        layout = block_pool_layout(cache.k, cache.v) if fast else None

        def step(p: int) -> None:
            if fast is not None:
                fast.forward([[5]], [[p]], layout, [table])
            else:
                positions = torch.tensor([[p]])
                model(torch.tensor([[5]]), positions, cache.batch([table], positions))

        for i in range(3):
            step(context + i)
        start = time.thread_time()
        for i in range(tokens):
            step(context + 3 + i)
        cpu_us = 1e6 * (time.thread_time() - start) / tokens
        if fast is None:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(tokens):
                    step(context + 3 + tokens + i)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
            report["pytorch"] = {"cpu_us_per_token": round(cpu_us, 1),
                                 "ops_per_token": round(sum(e.count for e in events) / tokens, 1),
                                 "top_ops_self_cpu_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in top}}
        else:
            kernels.decode_profile(fast.lib, True)
            for i in range(tokens):
                step(context + 3 + tokens + i)
            phases = kernels.decode_profile(fast.lib, False)
            total = sum(phases.values())
            report["kernel"] = {"cpu_us_per_token": round(cpu_us, 1),
                                "phase_share": {k: round(v / total, 3) for k, v in phases.items()}}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant bench profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--tokens", type=int, default=50, help="decode steps to time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from engine.model_dir import default_model_dir

    print(json.dumps(run(args.model or str(default_model_dir()), args.tokens, args.threads, args.context), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
