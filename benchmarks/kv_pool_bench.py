"""The paged KV pool at work: keystroke time to first token with prefix reuse on a long context,
what a 32K-position model allocates, and aggregate tokens/s with many streams.

    python -m benchmarks.kv_pool_bench --model DIR [--out docs/bench] [--context 1500] [--streams 16 64]

Writes kv_pool_bench.json and kv_pool_bench.png into --out. Engines run with the defaults users
get (cache model, token healing, drafts) unless a row says otherwise.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import threading
import time
from pathlib import Path

import torch

from engine import CompletionInput, Engine, EngineConfig, SamplingParams
from engine.kv_cache import KVCache
from engine.model_dir import read_model_dir

from .report import pyplot, write_json

HELDOUT = Path(__file__).parents[1] / "tests" / "data" / "heldout"
STREAM_CONFIGS = (("int8 kv, drafts", {"kv_int8": True}), ("int8 kv, no drafts", {"kv_int8": True, "draft_tokens": 0}),
                  ("fp32 kv, no drafts", {"kv_int8": False, "draft_tokens": 0}))


def long_context(engine: Engine, tokens: int) -> str:
    """About `tokens` tokens of held-out code, cut at a line end."""
    text = "\n\n".join(f.read_text() for f in sorted(HELDOUT.rglob("*.py")))
    ids = engine.tokenizer.encode(text)[:tokens]
    cut = engine.tokenizer.decode(ids)
    return cut[:cut.rfind("\n") + 1]


def keystroke_ttft(engine: Engine, context: str, keystrokes: int = 12) -> dict:
    """A cold request on `context`, then one request per typed character (the prompt grows by a
    character each time, as an editor sends it): time to its first token, on the wall clock and
    as this process's CPU time for a request of one token (all of its work: prompt, cache model,
    prefill, choice). With one torch thread the CPU figure is what an idle core would take."""
    typed = "def find_documents(self, cond):\n    return self.sea"
    params = SamplingParams(max_tokens=1)
    cold = engine.complete(context, params=params)
    ttfts, cpus, reused = [], [], []
    for i in range(1, keystrokes + 1):
        cpu = time.process_time()
        done = engine.complete(context + typed[:len(typed) - keystrokes + i], params=params)
        cpus.append((time.process_time() - cpu) * 1000)
        ttfts.append(done.time_to_first_token * 1000)
        reused.append(done.reused_tokens / max(1, done.prompt_tokens))
    return {"prompt_tokens": cold.prompt_tokens, "cold_ms": round(cold.time_to_first_token * 1000, 1),
            "keystroke_ms_p50": round(statistics.median(ttfts), 1), "keystroke_ms_max": round(max(ttfts), 1),
            "keystroke_cpu_ms_p50": round(statistics.median(cpus), 1), "keystroke_cpu_ms_max": round(max(cpus), 1),
            "reused_share_p50": round(statistics.median(reused), 3)}


def pool_for_long_context(model_dir: Path, megabytes: float) -> dict:
    """What the pool costs for a model that declares 32,768 positions, against the old layout (a
    slot per batch row preallocated to the full context)."""
    c = read_model_dir(model_dir).config
    rows = {}
    for int8 in (False, True):
        cache = KVCache.sized(megabytes, c.n_layer, 16, c.n_kv_head, c.head_dim, int8=int8)
        rows["int8" if int8 else "fp32"] = {
            "pool_mb": round(cache.total_bytes() / 2**20, 1), "tokens_held": (cache.n_blocks - 1) * 16,
            "preallocated_32_slots_x_32768_mb": round(cache.bytes_per_token() * 32 * 32768 / 2**20, 1)}
    return rows


def streams(engine: Engine, prompts: list[str], n: int, new_tokens: int) -> dict:
    """Generated tokens per second of wall time and per CPU-second of this process, with n
    requests submitted together (prefills included). On a shared machine the CPU figure is the
    one that repeats: the wall clock also counts other jobs' time."""
    done = threading.Semaphore(0)
    params = SamplingParams(max_tokens=new_tokens)
    wall, cpu = time.perf_counter(), time.process_time()
    requests = [engine.submit(CompletionInput(prompts[i % len(prompts)], params=params),
                              lambda c: c.finish_reason and done.release()) for i in range(n)]
    for _ in requests:
        done.acquire()
    tokens = sum(r.generated for r in requests)
    return {"wall": tokens / (time.perf_counter() - wall), "cpu": tokens / (time.process_time() - cpu)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--context", type=int, default=1500)
    ap.add_argument("--streams", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--pool-mb", type=float, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-streams", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"model": str(args.model), "model_config": read_model_dir(args.model).config.to_dict(),
              "torch_threads": torch.get_num_threads()}

    print("keystroke time to first token ...", flush=True)
    engine = Engine.load(args.model, config=EngineConfig(kv_cache_mb=args.pool_mb))
    context = long_context(engine, args.context)
    report["keystroke_ttft"] = {"reuse": keystroke_ttft(engine, context)}
    engine.close()
    engine = Engine.load(args.model, config=EngineConfig(kv_cache_mb=args.pool_mb, prefix_reuse=False))
    report["keystroke_ttft"]["no_reuse"] = keystroke_ttft(engine, context, keystrokes=3)
    engine.close()
    print(json.dumps(report["keystroke_ttft"]), flush=True)

    report["pool_for_32k_context"] = pool_for_long_context(args.model, args.pool_mb)
    print(json.dumps(report["pool_for_32k_context"]), flush=True)

    text = "\n\n".join(f.read_text() for f in sorted(HELDOUT.rglob("*.py")))
    prompts = [text[i * 1500:i * 1500 + 800] for i in range(64)]
    rows = {}
    for label, extra in () if args.skip_streams else STREAM_CONFIGS:
        for n in args.streams:
            engine = Engine.load(args.model, config=EngineConfig(max_batch=n, kv_cache_mb=args.pool_mb, **extra))
            streams(engine, prompts, min(n, 4), 8)  # warm-up
            # The first run prefills every prompt; later ones find the prompts' blocks cached.
            runs = [streams(engine, prompts, n, args.new_tokens) for _ in range(args.repeats)]
            rows.setdefault(label, {})[str(n)] = {
                "first_run": {k: round(v, 1) for k, v in runs[0].items()},
                "later_runs_median": {k: round(statistics.median(r[k] for r in runs[1:]), 1) for k in ("wall", "cpu")}
                if len(runs) > 1 else None}
            print(label, n, "streams:", rows[label][str(n)], flush=True)
            engine.close()
    report["aggregate_tokens_per_s"] = rows
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    write_json(args.out / "kv_pool_bench.json", report)
    plot(report, args.out / "kv_pool_bench.png")
    print("wrote", args.out / "kv_pool_bench.json")
    return 0


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ttft = report["keystroke_ttft"]
    bars = {"keystroke, reuse": ttft["reuse"]["keystroke_cpu_ms_p50"],
            "keystroke, no reuse": ttft["no_reuse"]["keystroke_cpu_ms_p50"]}
    left.bar(list(bars), list(bars.values()), color=["#2a7", "#c44"])
    left.axhline(150, linestyle="--", color="k", linewidth=0.8)
    left.set_yscale("log")
    left.set_ylabel("time to first token, CPU ms (p50, log; dashed: 150)")
    left.set_title(f"{ttft['reuse']['prompt_tokens']}-token context")
    for label, row in report["aggregate_tokens_per_s"].items():
        xs = [int(n) for n in row]
        right.plot(xs, [r["first_run"]["cpu"] for r in row.values()], marker="o", label=label)
    right.set_xlabel("concurrent streams")
    right.set_ylabel("generated tokens per CPU-second (first run)")
    if report["aggregate_tokens_per_s"]:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
