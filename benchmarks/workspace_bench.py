"""`code-assistant bench workspace`: the workspace index and what it does for completions.

1. Index build time, query time and memory against repository size: real code (this Python's
   standard library, tokenized with the model's tokenizer) cut to each size, one subprocess per
   size so that its peak memory is its own. Queries are histories from the held-out projects (not
   in the index), a fresh search and the incremental one a generation step makes.
2. Line completion on the held-out projects without and with the workspace, and the loop rate of
   64-token multi-line completions: `code-assistant eval --line-completion` output (`--report`),
   beside the same figures measured before the workspace (`--before`).

    python -m benchmarks.workspace_bench --report models/default/eval/line_completion.json \
        --before docs/bench/workspace_before.json --out docs/bench
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from .report import pyplot, write_json

SIZES = (100_000, 1_000_000, 10_000_000)
QUERIES = 2000


def corpus_tokens(tokenizer, n: int) -> list:
    """Files of the standard library, tokenized, until `n` tokens."""
    import numpy as np

    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if total >= n:
            break
        try:
            ids = np.asarray(tokenizer.encode(path.read_text(encoding="utf-8")), dtype=np.uint32)
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(ids[:n - total])
        total += len(docs[-1])
    return docs


def measure_size(model_dir: str, n: int) -> dict:
    """Runs in its own process: build an index of n tokens, time queries, report peak memory."""
    import numpy as np

    from engine.model_dir import load_tokenizer_from_dir
    from engine.suffix_index import SuffixIndex

    tokenizer = load_tokenizer_from_dir(model_dir)
    docs = corpus_tokens(tokenizer, n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    index = SuffixIndex.build(docs)
    build_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    held = Path(__file__).resolve().parents[1] / "tests" / "data" / "heldout"
    probe = np.concatenate([tokenizer.encode(p.read_text()) for p in sorted(held.rglob("*.py"))])
    rng = np.random.default_rng(0)
    ends = rng.integers(64, len(probe), QUERIES)
    fresh, step, lengths = [], [], []
    for end in ends:
        history = probe[end - 64:end].tolist()
        t = time.perf_counter()
        match = index.longest_match(history)
        fresh.append(time.perf_counter() - t)
        history.append(int(probe[end]) if end < len(probe) else 0)
        t = time.perf_counter()
        index.longest_match(history, previous=match.length)
        step.append(time.perf_counter() - t)
        lengths.append(match.length)
    return {"tokens": index.n_tokens, "build_s": round(build_s, 2), "index_mb": round(index.nbytes / 2**20, 1),
            "build_peak_mb": round(peak / 1024, 1), "query_us_p50": round(1e6 * statistics.median(fresh), 1),
            "query_us_p95": round(1e6 * sorted(fresh)[int(0.95 * len(fresh))], 1),
            "step_query_us_p50": round(1e6 * statistics.median(step), 1),
            "match_tokens_mean": round(statistics.fmean(lengths), 2)}


def plot(result: dict, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    index = result["index"]
    sizes = [r["tokens"] / 1e6 for r in index]
    ax = axes[0]
    ax.plot(sizes, [r["query_us_p50"] for r in index], "o-", label="query p50 (fresh)")
    ax.plot(sizes, [r["step_query_us_p50"] for r in index], "s-", label="query p50 (generation step)")
    ax.set_xscale("log")
    ax.set_xlabel("repository size (M tokens)")
    ax.set_ylabel("microseconds")
    ax.set_title("index query time")
    ax2 = ax.twinx()
    ax2.plot(sizes, [r["build_s"] for r in index], "^--", color="grey", label="build (s)")
    ax2.set_ylabel("build seconds")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)

    ax = axes[1]
    lc = result.get("line_completion", {})
    groups = [("file only", "network+cache_fim"), ("with workspace", "network+cache_fim+workspace")]
    width, x = 0.2, range(len(groups))
    for offset, (label, source, metric) in enumerate((("EM before", "before", "exact_match"),
                                                      ("EM after", "after", "exact_match"),
                                                      ("ES before", "before", "edit_similarity"),
                                                      ("ES after", "after", "edit_similarity"))):
        # Before issue 16 there was no workspace: its nearest figure is the other files as neighbours.
        values = [100 * (lc.get(source, {}).get(key) or lc.get(source, {}).get("network+cache_fim+neighbours", {}))
                  .get(metric, 0) for _, key in groups]
        ax.bar([i + (offset - 1.5) * width for i in x], values, width, label=label)
    ax.set_xticks(list(x), [g for g, _ in groups])
    ax.set_ylabel("%")
    ax.set_title("line completion, unseen projects")
    ax.legend(fontsize=8)

    ax = axes[2]
    loops = result.get("loops", {})
    names = list(loops)
    bars = ax.bar(names, [100 * loops[n] for n in names], color="tab:red")
    ax.bar_label(bars, fmt="%.1f %%", fontsize=8)
    ax.set_ylabel("% of 64-token multi-line completions")
    ax.set_title("loop rate")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant bench workspace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (its tokenizer; default: the default model)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--report", type=Path, help="`code-assistant eval --line-completion` JSON (after)")
    parser.add_argument("--before", type=Path, help="the same figures measured before the workspace")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from engine.model_dir import default_model_dir

    model = args.model or str(default_model_dir())
    if args.one_size:
        print(json.dumps(measure_size(model, args.one_size)))
        return 0
    result: dict = {"index": [], "machine": "2 shared CPU cores"}
    for n in args.sizes:
        print(f"index of {n:,} tokens ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.workspace_bench", "--model", model,
                              "--one-size", str(n)], capture_output=True, text=True, check=True)
        result["index"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(result["index"][-1]), file=sys.stderr, flush=True)
    if args.report:
        after = json.loads(args.report.read_text()).get("line_completion", {})
        before = json.loads(args.before.read_text()) if args.before else {}
        result["line_completion"] = {"after": after, "before": before.get("line_completion", {})}
        result["loops"] = {**{f"before, {k}": v["loop_rate"] for k, v in before.get("loops", {}).items()},
                           **{f"after, {k[6:]}": v["loop_rate"] for k, v in after.items() if k.startswith("loops_")}}
    write_json(args.out / "workspace_bench.json", result)
    plot(result, args.out / "workspace_bench.png")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
