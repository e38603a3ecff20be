"""`code-assistant bench engine`: our engine (fp32 and int8) against Hugging Face transformers.

All in one process, on the same weights: HF `GPT2LMHeadModel` with our weights loaded (greedy
`generate`, one request after another: what a user would pick) as the baseline, and the engine with
fp32 and int8 weights. Reports batch-1 tokens/s; aggregate tokens/s at 1, 8, 32, 100 concurrent
streams; p50/p95 latency of a 50-token completion; time to first token with and without prefix
reuse; memory; KV-cache bytes per token; and the memory-bandwidth floor of batch-1 decode
(weight bytes / measured copy bandwidth). Writes engine_bench.json and engine_bench.png into --out.
"""
from __future__ import annotations

import dataclasses
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import sysconfig
import threading
import time
from pathlib import Path

import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.families import hf_config, to_hf
from engine.kv_cache import bytes_per_token
from engine.model import Transformer
from engine.model_dir import default_model_dir, load_model_dir

# Real Python to cut prompts from: the standard library, so the benchmark needs no data.
PROMPT_SOURCES = ["json/decoder.py", "json/encoder.py", "email/utils.py", "argparse.py", "textwrap.py"]


def code_prompts(n: int, chars: int) -> list[str]:
    """n distinct prompts of about `chars` characters, each ending at a line break."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n".join((stdlib / p).read_text(encoding="utf-8") for p in PROMPT_SOURCES if (stdlib / p).exists())
    step = max(1, (len(text) - chars) // max(1, n))
    prompts = []
    for i in range(n):
        piece = text[i * step:i * step + chars]
        prompts.append(piece[:piece.rfind("\n") + 1] or piece)
    return prompts


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the baseline -------------------------------------------------------------------------------
def to_transformers(model: Transformer, hf_config_json: dict | None):
    """The transformers model of the same family carrying our weights (for our first format's
    models, GPT2LMHeadModel)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(hf_config_json or hf_config(model.config, None, None))
    raw.pop("code_assistant", None)
    raw.pop("architectures", None)
    config = AutoConfig.for_model(raw.pop("model_type"), **{k: v for k, v in raw.items() if not k.endswith("pdrop")})
    hf = AutoModelForCausalLM.from_config(config).eval()
    state = {k: v for k, v in model.state_dict().items() if not (model.config.tie_embeddings and k == "head.weight")}
    missing, unexpected = hf.load_state_dict(to_hf(model.config, state), strict=False)
    if unexpected or any(not k.endswith(("attn.bias", "attn.masked_bias")) and k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"weights do not map onto {type(hf).__name__}: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def hf_generate(hf, ids: list[int], max_tokens: int) -> list[int]:
    """Greedy generate with the KV cache, exactly `max_tokens` new tokens."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return out[0, len(ids):].tolist()


# ---- measurements -------------------------------------------------------------------------------
def copy_bandwidth_gbs(mb: int = 256) -> float:
    """Best of a few large copies: bytes read + bytes written per second."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights occupy in memory (parameters, buffers and FBGEMM packed int8 weights)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    for m in model.modules():
        if hasattr(m, "_packed_params") and hasattr(m, "weight") and callable(m.weight):
            total += m.weight().numel() + 4 * m.weight().size(0)  # int8 values + per-row scale
            if m.bias() is not None:
                total += 4 * m.bias().numel()
    return total


def batch1(engine: Engine, prompts: list[str], max_tokens: int) -> dict:
    """One request at a time, each a prompt no slot holds (prefill included, as for the baseline)."""
    params = SamplingParams(max_tokens=max_tokens)
    engine.complete(prompts[0][:200], params=params)  # warm-up
    rates = []
    for prompt in prompts:
        t = time.perf_counter()
        done = engine.complete(prompt, params=params)
        rates.append(done.tokens / (time.perf_counter() - t))
    return {"tokens_per_s": round(max(rates), 1), "runs": [round(r, 1) for r in rates]}


def hf_batch1(hf, encode, prompts: list[str], max_tokens: int) -> dict:
    hf_generate(hf, encode(prompts[0][:200], 4), 4)  # warm-up
    rates = []
    for prompt in prompts:
        t = time.perf_counter()
        tokens = hf_generate(hf, encode(prompt, max_tokens), max_tokens)
        rates.append(len(tokens) / (time.perf_counter() - t))
    return {"tokens_per_s": round(max(rates), 1), "runs": [round(r, 1) for r in rates]}


def concurrent(engine: Engine, prompts: list[str], max_tokens: int) -> dict:
    """Submit every prompt at once; aggregate tokens/s until the last one finishes."""
    params = SamplingParams(max_tokens=max_tokens)
    left = threading.Semaphore(0)
    latencies: list[float] = []
    tokens = [0]

    def submit(prompt: str) -> None:
        start = time.perf_counter()

        def on_chunk(chunk) -> None:
            if chunk.finish_reason:
                latencies.append(time.perf_counter() - start)
                tokens[0] += chunk.tokens
                left.release()
        engine.submit(prompt, None, params, on_chunk)

    t = time.perf_counter()
    for prompt in prompts:
        submit(prompt)
    for _ in prompts:
        left.acquire()
    wall = time.perf_counter() - t
    return {"streams": len(prompts), "tokens": tokens[0], "seconds": round(wall, 3),
            "tokens_per_s": round(tokens[0] / wall, 1), "p50_latency_s": round(statistics.median(latencies), 3)}


def hf_sequential(hf, encode, prompts: list[str], max_tokens: int) -> dict:
    t = time.perf_counter()
    n = sum(len(hf_generate(hf, encode(p, max_tokens), max_tokens)) for p in prompts)
    wall = time.perf_counter() - t
    return {"requests": len(prompts), "tokens": n, "seconds": round(wall, 3), "tokens_per_s": round(n / wall, 1)}


def latency(engine: Engine, prompts: list[str], max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens)
    times, tokens = [], []
    for prompt in prompts:
        t = time.perf_counter()
        done = engine.complete(prompt, params=params)
        times.append(time.perf_counter() - t)
        tokens.append(done.tokens)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"requests": len(prompts), "mean_tokens": round(statistics.mean(tokens), 1),
            "p50_ms": round(1e3 * statistics.median(times), 1), "p95_ms": round(1e3 * p95, 1)}


def time_to_first_token(engine: Engine, prompts: list[str]) -> dict:
    """Cold: a prompt no slot holds. Reused: the same prompt plus one more line (the next keystrokes)."""
    params = SamplingParams(max_tokens=4)
    cold, warm, reused = [], [], []
    for prompt in prompts:
        first = engine.complete(prompt, params=params)
        cold.append(first.time_to_first_token)
        again = engine.complete(prompt + "    return", params=params)
        warm.append(again.time_to_first_token)
        reused.append(again.reused_tokens / max(1, again.prompt_tokens))
    return {"prompt_tokens": first.prompt_tokens, "without_reuse_ms": round(1e3 * statistics.median(cold), 2),
            "with_reuse_ms": round(1e3 * statistics.median(warm), 2),
            "reused_fraction": round(statistics.mean(reused), 3)}


def hf_ttft(hf, encode, prompts: list[str]) -> dict:
    firsts = []
    for prompt in prompts:
        t = time.perf_counter()
        hf_generate(hf, encode(prompt, 4), 1)
        firsts.append(time.perf_counter() - t)
    return {"ms": round(1e3 * statistics.median(firsts), 2)}


# ---- the run ------------------------------------------------------------------------------------
def run(model_dir: Path, quick: bool, max_batch: int) -> dict:
    torch.set_grad_enabled(False)
    streams = [1, 8] if quick else [1, 8, 32, 100]
    gen_tokens = 16 if quick else 64
    repeats = 1 if quick else 3
    baseline_requests = 2 if quick else 8
    n_latency = 3 if quick else 20
    n_ttft = 2 if quick else 5

    rss0 = rss_mb()
    fp32_model, tokenizer, info = load_model_dir(model_dir)
    c = fp32_model.config
    # The network alone, decoding as the baseline does; the context cache model is measured apart.
    config = EngineConfig(max_batch=max_batch, token_healing=False, cache_weight=0.0)
    engines = {"fp32": Engine.load(model_dir, quantize=None, config=config)}
    rss_fp32 = rss_mb()
    engines["int8"] = Engine.load(model_dir, quantize="int8", config=config)
    rss_int8 = rss_mb()
    report: dict = {
        "model": str(model_dir), "config": c.to_dict(), "quick": quick,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "load_average_at_start": os.getloadavg()[0]},
        "engine_config": dataclasses.asdict(config),
        "parameters": sum(p.numel() for p in fp32_model.parameters()),
    }
    try:
        hf = to_transformers(fp32_model, None if info.legacy else info.raw)
        probe = torch.tensor([tokenizer.encode(code_prompts(1, 400)[0])[:64]])
        report["baseline"] = {"name": f"transformers {type(hf).__name__}.generate (greedy, KV cache)",
                              "max_abs_logit_diff_vs_ours": float((hf(probe).logits - fp32_model(probe)).abs().max())}
    except ImportError:
        hf = None
        report["baseline"] = {"name": "transformers not installed (pip install 'code-assistant[bench]')"}

    def encode(prompt: str, max_tokens: int) -> list[int]:  # the same trimmed prompt the engine uses
        return engines["fp32"].build_prompt(prompt, None, max_tokens)

    b1_prompts = code_prompts(repeats, 300)
    b1 = {name: batch1(e, b1_prompts, gen_tokens * 2) for name, e in engines.items()}
    if hf is not None:
        b1["hf_baseline"] = hf_batch1(hf, encode, b1_prompts, gen_tokens * 2)
    with_cache = Engine.load(model_dir, quantize="int8", config=EngineConfig(max_batch=max_batch))
    cached = batch1(with_cache, b1_prompts, gen_tokens * 2)
    with_cache.close()
    report["cache_model_batch1"] = {
        "what": "int8 engine with the defaults on (context cache model, token healing) vs the network alone",
        "tokens_per_s": cached["tokens_per_s"],
        "time_per_token_overhead": round(b1["int8"]["tokens_per_s"] / cached["tokens_per_s"] - 1, 3)}
    bandwidth = copy_bandwidth_gbs(64 if quick else 256)
    floors = {}
    for name, e in engines.items():
        wb = weight_bytes(e.model)
        floors[name] = {"weight_bytes": wb, "floor_tokens_per_s": round(bandwidth * 1e9 / wb, 1),
                        "fraction_of_floor": round(b1[name]["tokens_per_s"] / (bandwidth * 1e9 / wb), 3)}
    report["batch1"] = {"prompt_tokens": len(encode(b1_prompts[0], gen_tokens * 2)), "new_tokens": gen_tokens * 2, **b1}
    report["bandwidth_floor"] = {"copy_bandwidth_gb_s": round(bandwidth, 1), **floors}
    if hf is not None:
        for name in engines:
            report["batch1"][f"{name}_speedup"] = round(b1[name]["tokens_per_s"] / b1["hf_baseline"]["tokens_per_s"], 2)

    agg: dict = {name: [] for name in engines}
    for n in streams:
        prompts = code_prompts(n, 200)
        for name, e in engines.items():
            agg[name].append(concurrent(e, prompts, gen_tokens))
    if hf is not None:
        agg["hf_sequential"] = hf_sequential(hf, encode, code_prompts(baseline_requests, 200), gen_tokens)
        for name in engines:
            for row in agg[name]:
                row["speedup_vs_baseline"] = round(row["tokens_per_s"] / agg["hf_sequential"]["tokens_per_s"], 2)
    report["aggregate"] = {"new_tokens_per_request": gen_tokens, **agg}

    lat_prompts = code_prompts(n_latency, 240)
    report["latency_50_tokens"] = {name: latency(e, lat_prompts, 50) for name, e in engines.items()}

    # Prompts of about 3/4 of the context, the rest left for the keystroke and the completion.
    ttft_prompts = [tokenizer.decode(tokenizer.encode(p)[:c.block_size * 3 // 4]) for p in code_prompts(n_ttft, 2000)]
    report["time_to_first_token"] = {name: time_to_first_token(e, ttft_prompts) for name, e in engines.items()}
    if hf is not None:
        report["time_to_first_token"]["hf_baseline"] = hf_ttft(hf, encode, ttft_prompts)

    kv = {}
    for name, int8 in (("fp32", False), ("int8", True)):
        per_token = bytes_per_token(c.n_layer, c.n_kv_head, c.head_dim, torch.float32, int8)
        kv[name] = {"bytes_per_token": per_token,
                    "cache_mb_for_config": round(per_token * c.block_size * max_batch / 2**20, 1)}
    report["kv_cache"] = kv
    report["memory"] = {"rss_before_load_mb": round(rss0, 1), "rss_fp32_engine_mb": round(rss_fp32 - rss0, 1),
                        "rss_int8_engine_mb": round(rss_int8 - rss_fp32, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                        "weights_mb": {n: round(f["weight_bytes"] / 2**20, 2) for n, f in floors.items()}}
    for e in engines.values():
        e.close()
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = [n for n in ("hf_baseline", "fp32", "int8") if n in report["batch1"]]
    ax = axes[0][0]
    ax.bar(names, [report["batch1"][n]["tokens_per_s"] for n in names], color=["grey", "tab:blue", "tab:orange"][:len(names)])
    for n in ("fp32", "int8"):
        ax.axhline(report["bandwidth_floor"][n]["floor_tokens_per_s"], ls="--",
                   color="tab:blue" if n == "fp32" else "tab:orange", label=f"{n} bandwidth floor")
    ax.set_title("batch-1 decode, tokens/s")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for n in ("fp32", "int8"):
        rows = report["aggregate"][n]
        ax.plot([r["streams"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=f"engine {n}")
    if "hf_sequential" in report["aggregate"]:
        ax.axhline(report["aggregate"]["hf_sequential"]["tokens_per_s"], color="grey", ls="--",
                   label="transformers, one at a time")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_title("aggregate tokens/s")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    lat = report["latency_50_tokens"]
    x = range(len(lat))
    ax.bar([i - 0.2 for i in x], [v["p50_ms"] for v in lat.values()], width=0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [v["p95_ms"] for v in lat.values()], width=0.4, label="p95")
    ax.set_xticks(list(x), list(lat))
    ax.set_title("50-token completion latency, ms")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    ttft = {k: v for k, v in report["time_to_first_token"].items() if k != "hf_baseline"}
    x = range(len(ttft))
    ax.bar([i - 0.2 for i in x], [v["without_reuse_ms"] for v in ttft.values()], width=0.4, label="no reuse")
    ax.bar([i + 0.2 for i in x], [v["with_reuse_ms"] for v in ttft.values()], width=0.4, label="prefix reuse")
    ax.set_xticks(list(x), list(ttft))
    ax.set_title(f"time to first token, ms ({next(iter(ttft.values()))['prompt_tokens']}-token prompt)")
    ax.legend(fontsize=8)
    fig.suptitle(f"code-assistant engine, {report['parameters'] / 1e6:.1f}M parameters, "
                 f"{report['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant bench engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the default model)")
    parser.add_argument("--out", default="bench-results", help="where to write engine_bench.json/.png")
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test): fewer streams and tokens")
    parser.add_argument("--max-batch", type=int, default=EngineConfig.max_batch, help="engine KV-cache slots")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    model_dir = Path(args.model) if args.model else default_model_dir()
    if not model_dir.is_dir():
        print(f"code-assistant bench engine: no model directory at {model_dir}; pass --model DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(model_dir, args.quick, args.max_batch)
    (out / "engine_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "engine_bench.png")
    summary = {"batch1_tokens_per_s": {k: v["tokens_per_s"] for k, v in report["batch1"].items() if isinstance(v, dict)},
               "json": str(out / "engine_bench.json"), "png": str(out / "engine_bench.png")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
