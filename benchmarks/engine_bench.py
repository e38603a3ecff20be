"""`code-assistant bench engine`: our engine beside transformers, CTranslate2 and llama.cpp on the same weights.

For each model (the shipped one, a named random shape such as qwen2-0.5b, or a directory) every
engine runs in its own process on the same float weights, each with its own int8 scheme: ours
(int8 weights with per-row scales, the compiled decode step; `ours-pytorch` is the same engine
with the kernels off), transformers + torch's quantize_dynamic, CTranslate2 int8, llama.cpp q8_0
(through llama-cpp-python, or llama-server where that is not installed); and 4-bit beside it:
`ours-int4` (int4 groups of 32) and `llama.cpp-q4_k_m` (the same weights through llama-quantize).
An engine that is not installed is skipped with the reason printed.
Engines take turns on each prompt (A, B, C, D, A, B, ...) so that the load of a shared machine
falls on all of them alike; medians are reported.

Measured per model and thread count: batch-1 decode tokens/s (greedy, the time after the first
token) and time to first token; aggregate tokens/s with many streams (each engine's own way:
our continuous batching, batched generate, generate_batch, llama.cpp one request after another);
resident memory of each engine's process. Beside them: each engine's memory-bandwidth bound of
batch-1 decode (the bytes of its weights read per token / measured copy bandwidth: int8 for the
int8 engines, our int4 layout, the GGUF's own tensors) and how near it gets. Writes
engine_bench.json and engine_bench.png into --out and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

from engine.families import config_from_hf
from engine.model_dir import load_tokenizer_from_dir, read_model_dir
from engine.prompt import PromptBuilder

from . import bench_engines
from .bench_models import ctranslate2_dir, describe, gguf_file, gguf_weight_bytes, hf_dir
from .report import pyplot, write_json

# Real Python to cut prompts from: the standard library, so the benchmark needs no data.
PROMPT_SOURCES = ["json/decoder.py", "json/encoder.py", "email/utils.py", "argparse.py", "textwrap.py"]
ROOT = Path(__file__).resolve().parents[1]
SEQUENTIAL = 8  # requests one after another beside the streams: the per-request rate
# Engines compared head to head: batch-1 decode tokens/s of the first over the second, per prompt.
RATIOS = (("ours-int4", "llama.cpp-q4_k_m"), ("ours", "llama.cpp"), ("ours-int4", "ours"))


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


def copy_bandwidth_gbs(mb: int) -> float:
    """Best of a few large copies on every thread: bytes read + bytes written per second."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def int8_weight_bytes(hf_raw: dict) -> int:
    """Bytes of int8 weights one decode step reads: every linear layer and the head (the
    embedding's rows are looked up, not read whole)."""
    c = config_from_hf(hf_raw)
    qkv = (c.n_head + 2 * c.n_kv_head) * c.head_dim
    up = c.intermediate_size * (2 if c.mlp == "swiglu" else 1)
    per_layer = c.n_embd * qkv + c.n_head * c.head_dim * c.n_embd + c.n_embd * up + c.intermediate_size * c.n_embd
    return c.n_layer * per_layer + c.vocab_size * c.n_embd


def int4_weight_bytes(hf_raw: dict) -> int:
    """The same for our int4 layout (engine/quantize.py's `int4_bytes`): every linear layer and the
    head, tied or not, in int4 groups of 32 with a float16 scale each."""
    from engine.quantize import int4_bytes

    c = config_from_hf(hf_raw)
    qkv = (c.n_head + 2 * c.n_kv_head) * c.head_dim
    up = c.intermediate_size * (2 if c.mlp == "swiglu" else 1)
    per_layer = (int4_bytes(qkv, c.n_embd) + int4_bytes(c.n_embd, c.n_head * c.head_dim) + int4_bytes(up, c.n_embd)
                 + int4_bytes(c.n_embd, c.intermediate_size))
    return c.n_layer * per_layer + int4_bytes(c.vocab_size, c.n_embd)


def check_weights(model_dir: Path) -> None:
    """Every weights file opens (its header and size agree); ModelDirError otherwise."""
    from engine.model_dir import check_weights_files

    check_weights_files(model_dir)


class Worker:
    """One engine in its own process (benchmarks/bench_engines.py)."""

    def __init__(self, engine: str, artifacts: dict, threads: int, max_batch: int):
        self.engine = engine
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_engines", engine, json.dumps({k: str(v) if isinstance(v, Path) else v
                                                                                    for k, v in artifacts.items()}),
             str(threads), str(max_batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.engine} exited with {self.proc.wait()} (its stderr is above)")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.engine}: {reply['error']}")
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def decode_rate(r: dict) -> float:
    return (len(r["tokens"]) - 1) / max(1e-9, r["total_s"] - r["ttft_s"])


def decode_cpu_ms(r: dict) -> float:
    """CPU milliseconds (all the engine's threads) per token after the first."""
    return 1e3 * r["decode_cpu_s"] / max(1, len(r["tokens"]) - 1)


def bench_model(model: str, engines: list[str], threads_list: list[int], args, work: Path, bandwidth: float) -> dict:
    hf = hf_dir(model, work)
    raw = json.loads((hf / "config.json").read_text())
    info = read_model_dir(hf)
    tokenizer = load_tokenizer_from_dir(info)
    check_weights(hf)  # a broken directory is one clear error here, not a worker dying later
    block = info.config.block_size
    builder = PromptBuilder(tokenizer, block, 0)
    n_prompts = args.repeats + 1
    texts = code_prompts(n_prompts + args.streams + SEQUENTIAL, args.prompt_chars)
    prompts = [(t, builder.build(t, None, args.new_tokens, (), None, None)) for t in texts]
    artifacts = {"hf": hf, "context": min(block, max(len(ids) for _, ids in prompts) + args.new_tokens + 8)}
    report = {"model": model, "hf_dir": str(hf), "shape": describe(hf), "skipped": {},
              "prompt_tokens": statistics.median(len(ids) for _, ids in prompts[:n_prompts]),
              "new_tokens": args.new_tokens, "batch1": {}, "streams": {}, "rss_mb": {}}
    runnable = []
    for engine in engines:
        reason = bench_engines.missing(engine)
        if reason is None:
            try:
                if engine == "ctranslate2":
                    artifacts["ctranslate2"] = ctranslate2_dir(hf, work)
                elif engine in bench_engines.GGUF_TYPES:
                    quant = bench_engines.GGUF_TYPES[engine]
                    artifacts[f"gguf-{quant}"] = gguf_file(hf, work, quant=quant)
            except Exception as e:  # a converter that fails skips its engine, not the run
                reason = f"conversion failed: {type(e).__name__}: {e}"
        if reason:
            print(f"skipping {engine}: {reason}", file=sys.stderr, flush=True)
            report["skipped"][engine] = reason
        else:
            runnable.append(engine)
    wb = int8_weight_bytes(raw)
    report["bandwidth_bound"] = {"int8_weight_mb_per_token": round(wb / 2**20, 1),
                                 "tokens_per_s": round(bandwidth * 1e9 / wb, 1)}
    report["bandwidth_bounds"] = {}  # each engine's own weight bytes
    for engine in runnable:
        quant = bench_engines.GGUF_TYPES.get(engine)
        nbytes = (gguf_weight_bytes(artifacts[f"gguf-{quant}"]) if quant else
                  int4_weight_bytes(raw) if engine == "ours-int4" else wb)
        report["bandwidth_bounds"][engine] = {"weight_mb_per_token": round(nbytes / 2**20, 1),
                                              "tokens_per_s": round(bandwidth * 1e9 / nbytes, 1)}
    report["backends"] = {}
    for threads in threads_list:
        workers = {}
        for engine in runnable:
            print(f"{model}: starting {engine} ({threads} thread{'s' * (threads > 1)})", file=sys.stderr, flush=True)
            workers[engine] = Worker(engine, artifacts, threads, max(1, args.streams))
            report["backends"][engine] = workers[engine].ready.get("backend", engine)
        first = {}
        for engine, w in workers.items():  # warm-up, and the first tokens each engine chooses
            text, ids = prompts[-1]
            first[engine] = w.ask(op="generate", ids=ids, text=text, n=args.new_tokens)
        runs: dict[str, list[dict]] = {e: [] for e in workers}
        for rep in range(args.repeats):
            text, ids = prompts[rep]
            order = list(workers)[rep % len(workers):] + list(workers)[:rep % len(workers)]
            for engine in order:
                runs[engine].append(workers[engine].ask(op="generate", ids=ids, text=text, n=args.new_tokens))
            print(f"{model} x{threads}: prompt {rep + 1}/{args.repeats} " + ", ".join(
                f"{e} {decode_rate(runs[e][-1]):.0f} tok/s ({decode_cpu_ms(runs[e][-1]):.2f} cpu ms/token)"
                for e in workers), file=sys.stderr, flush=True)
        for engine, rs in runs.items():
            rates = [decode_rate(r) for r in rs]
            entry = report["batch1"].setdefault(engine, {})
            entry[str(threads)] = {"decode_tokens_per_s": round(statistics.median(rates), 1),
                                   "decode_cpu_ms_per_token": round(statistics.median(decode_cpu_ms(r) for r in rs), 3),
                                   "ttft_ms": round(1e3 * statistics.median(r["ttft_s"] for r in rs), 1),
                                   "share_of_bandwidth_bound": round(statistics.median(rates) / report[
                                       "bandwidth_bounds"][engine]["tokens_per_s"], 3),
                                   "runs": [round(x, 1) for x in rates]}
        for a, b in RATIOS:  # each prompt's pair of runs, one after the other
            if a in runs and b in runs:
                ratios = [decode_rate(x) / decode_rate(y) for x, y in zip(runs[a], runs[b])]
                report.setdefault("decode_ratios", {}).setdefault(f"{a} / {b}", {})[str(threads)] = {
                    "median": round(statistics.median(ratios), 3), "runs": [round(x, 3) for x in ratios]}
        if "ours" in first:  # same weights, so greedy starts alike until int8 rounding tips a near tie
            ours = first["ours"]["tokens"]
            report.setdefault("greedy_prefix_agreeing_with_ours", {})[str(threads)] = {
                e: next((i for i, (a, b) in enumerate(zip(ours, f["tokens"])) if a != b), min(len(ours), len(f["tokens"])))
                for e, f in first.items() if isinstance(f["tokens"], list)}
        if args.streams and threads == max(threads_list):
            many = prompts[n_prompts:n_prompts + args.streams]
            fresh = prompts[n_prompts + args.streams:]
            for engine, w in workers.items():
                # One request after another costs the same per token however many there are: 8 tell it.
                sub = many if engine != "llama.cpp" else many[:min(8, len(many))]
                r = w.ask(op="streams", ids=[ids for _, ids in sub], texts=[t for t, _ in sub], n=args.new_tokens)
                # Requests like these one after another, prompts included as in the streams: what
                # batching gains. Prompts no engine has seen: the streams' own would be prefilled
                # already (an engine's prefix cache keeps them), a prompt of the streams' for free.
                alone = [w.ask(op="generate", ids=ids, text=text, n=args.new_tokens) for text, ids in fresh]
                sequential = sum(len(a["tokens"]) for a in alone) / sum(a["total_s"] for a in alone)
                entry = {"streams": len(many) if engine != "llama.cpp" else f"{len(sub)}, one by one",
                         "tokens": r["tokens"], "seconds": round(r["seconds"], 2),
                         "tokens_per_s": round(r["tokens"] / r["seconds"], 1), "threads": threads,
                         "sequential_tokens_per_s": round(sequential, 1),
                         "gain_over_sequential": round(r["tokens"] / r["seconds"] / sequential, 2)}
                if "decode_tokens_per_s" in r:  # the tokens after every stream's first, beside batch 1's decode
                    batch1 = statistics.median(decode_rate(a) for a in alone)
                    entry |= {"decode_tokens_per_s": round(r["decode_tokens_per_s"], 1),
                              "batch1_decode_tokens_per_s": round(batch1, 1),
                              "decode_gain_over_batch1": round(r["decode_tokens_per_s"] / batch1, 2)}
                report["streams"][engine] = entry
                print(f"{model}: {engine} {len(sub)} streams {r['tokens'] / r['seconds']:.0f} tok/s, one after another "
                      f"{sequential:.0f} tok/s", file=sys.stderr, flush=True)
        for engine, w in workers.items():
            rss = w.ask(op="rss")
            report["rss_mb"].setdefault(engine, {})[str(threads)] = {"after_load": w.ready["rss_load_mb"], **rss}
            w.close()
    return report


def run(args, save=None) -> dict:
    torch.set_grad_enabled(False)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in bench_engines.ENGINES]
    if unknown:
        raise SystemExit(f"code-assistant bench engine: unknown engine {unknown[0]!r} (known: {', '.join(bench_engines.ENGINES)})")
    threads_list = [int(t) for t in args.threads.split(",")]
    bandwidth = copy_bandwidth_gbs(64 if args.quick else 1024)
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()[0],
                          "copy_bandwidth_gb_s": round(bandwidth, 1)},
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")}, "models": []}
    for model in args.models.split(","):
        report["models"].append(bench_model(model.strip(), engines, threads_list, args, work, bandwidth))
        if save:
            save(report)  # each model's numbers are kept as soon as they exist
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return report


def table(report: dict) -> str:
    """The side-by-side as Markdown: decode tokens/s at batch 1 per thread count, many streams, RSS."""
    engines = [e for e in bench_engines.ENGINES if any(e in m["batch1"] for m in report["models"])]
    lines = ["| model | measure | " + " | ".join(engines) + " |", "| --- | --- | " + " | ".join("---" for _ in engines) + " |"]
    for m in report["models"]:
        threads = sorted({t for e in m["batch1"].values() for t in e}, key=int)
        for t in threads:
            cells = [f"{m['batch1'][e][t]['decode_tokens_per_s']:,.0f}" if t in m["batch1"].get(e, {}) else "-"
                     for e in engines]
            lines.append(f"| {m['model']} | batch 1, {t} thread{'s' * (t != '1')}: decode tok/s | " + " | ".join(cells) + " |")
        for t in threads:
            cells = [f"{m['batch1'][e][t]['decode_cpu_ms_per_token']:.2f}" if t in m["batch1"].get(e, {}) else "-"
                     for e in engines]
            lines.append(f"| {m['model']} | batch 1, {t} thread{'s' * (t != '1')}: CPU ms per token | " + " | ".join(cells) + " |")
        for t in threads:
            cells = [f"{m['batch1'][e][t]['ttft_ms']:,.0f}" if t in m["batch1"].get(e, {}) else "-" for e in engines]
            lines.append(f"| {m['model']} | time to first token, {t} thread{'s' * (t != '1')}: ms | " + " | ".join(cells) + " |")
        if m["streams"]:
            cells = [f"{m['streams'][e]['tokens_per_s']:,.0f}" if e in m["streams"] else "-" for e in engines]
            n = next(iter(m["streams"].values()))
            lines.append(f"| {m['model']} | {report['settings']['streams']} streams, {n['threads']} threads: tok/s | "
                         + " | ".join(cells) + " |")
            cells = [f"{m['streams'][e]['gain_over_sequential']:.2f}x" if e in m["streams"] else "-" for e in engines]
            lines.append(f"| {m['model']} | the streams against such requests one after another | "
                         + " | ".join(cells) + " |")
            gains = {e: m["streams"][e].get("decode_gain_over_batch1") for e in m["streams"]}
            cells = [f"{gains[e]:.2f}x" if gains.get(e) is not None else "-" for e in engines]
            lines.append(f"| {m['model']} | the streams' decoding (after every first token) against batch 1's | "
                         + " | ".join(cells) + " |")
        cells = [f"{max(r['peak_rss_mb'] for r in m['rss_mb'][e].values()):,.0f}" if e in m["rss_mb"] else "-"
                 for e in engines]
        lines.append(f"| {m['model']} | peak RSS, MB | " + " | ".join(cells) + " |")
        bounds = m.get("bandwidth_bounds", {})
        cells = [f"{bounds[e]['tokens_per_s']:,.0f} tok/s ({bounds[e]['weight_mb_per_token']} MiB/token)" if e in bounds
                 else "-" for e in engines]
        lines.append(f"| {m['model']} | bandwidth bound, batch 1 (weights / {report['machine']['copy_bandwidth_gb_s']} "
                     "GB/s) | " + " | ".join(cells) + " |")
        for t in threads:
            cells = [f"{m['batch1'][e][t]['share_of_bandwidth_bound']:.0%}"
                     if "share_of_bandwidth_bound" in m["batch1"].get(e, {}).get(t, {}) else "-" for e in engines]
            lines.append(f"| {m['model']} | batch 1, {t} thread{'s' * (t != '1')}: share of the bound | "
                         + " | ".join(cells) + " |")
        for pair, by_threads in m.get("decode_ratios", {}).items():
            for t, r in sorted(by_threads.items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {m['model']} | {pair}, batch 1, {t} thread{'s' * (t != '1')}: decode speed ratio "
                             f"(median of prompts) | {r['median']:.2f}x |" + " |" * (len(engines) - 1))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    models = report["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, m in enumerate(models):
        ax = axes[0][col]
        engines = list(m["batch1"])
        threads = sorted({t for e in m["batch1"].values() for t in e}, key=int)
        width = 0.8 / max(1, len(threads))
        for i, t in enumerate(threads):
            ax.bar([j + i * width for j in range(len(engines))],
                   [m["batch1"][e].get(t, {}).get("decode_tokens_per_s", 0) for e in engines], width=width,
                   label=f"{t} thread{'s' * (t != '1')}")
        ax.axhline(m["bandwidth_bound"]["tokens_per_s"], ls="--", color="grey", label="memory-bandwidth bound, int8")
        if "ours-int4" in m.get("bandwidth_bounds", {}):
            ax.axhline(m["bandwidth_bounds"]["ours-int4"]["tokens_per_s"], ls=":", color="grey",
                       label="memory-bandwidth bound, our int4")
        ax.set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(engines))], engines, fontsize=8)
        ax.set_title(f"{m['model']}: batch-1 decode, tokens/s")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        names = list(m["streams"])
        ax.bar(names, [m["streams"][e]["tokens_per_s"] for e in names], color="tab:green")
        ax.set_title(f"{m['model']}: {report['settings']['streams']} streams, aggregate tokens/s", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"same weights, int8 (and 4-bit) in each engine; {report['machine']['cpus']} CPUs, "
                 f"load average {report['machine']['load_average_at_start']:.1f} at start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant bench engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,qwen2-0.5b",
                        help="comma-separated: default (the shipped model), qwen2-0.5b (its shape, random), or directories")
    parser.add_argument("--model", default=None, help="one model directory (overrides --models)")
    parser.add_argument("--engines", default=",".join(e for e in bench_engines.ENGINES if e != "ours-pytorch"),
                        help=f"comma-separated, of: {', '.join(bench_engines.ENGINES)}")
    parser.add_argument("--threads", default="1,2", help="thread counts to run each engine with")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=800, help="prompt length in characters (~200 tokens)")
    parser.add_argument("--repeats", type=int, default=5, help="prompts per engine at batch 1 (medians)")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams for the aggregate (0: skip)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "code-assistant" / "bench"),
                        help="where converted models are kept between runs")
    parser.add_argument("--out", default="bench-results", help="where to write engine_bench.json/.png")
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.model:
        if not Path(args.model).is_dir():
            print(f"code-assistant bench engine: no model directory at {args.model}", file=sys.stderr)
            return 2
        args.models = args.model
    if args.quick:
        args.new_tokens, args.repeats, args.streams = min(args.new_tokens, 8), 1, min(args.streams, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    def save(report: dict) -> None:
        report["table"] = table(report)
        write_json(out / "engine_bench.json", report)

    report = run(args, save)
    save(report)
    plot(report, out / "engine_bench.png")
    print(report["table"])
    print(json.dumps({"json": str(out / "engine_bench.json"), "png": str(out / "engine_bench.png")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
