"""`code-assistant bench load`: how long a model directory takes to load and how much memory it holds,
float and int8, each in a fresh process (so one load's memory never counts in the other's).

With `--qwen-0.5b DIR` it first writes a random model of Qwen2.5-Coder-0.5B's shape there (24 layers,
896 wide, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936; benchmarks/hf_models.py), the size a
team would start from. Writes load_bench.json and load_bench.png into --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .report import pyplot, write_json

PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from engine import Engine, EngineConfig, SamplingParams
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
imported = time.perf_counter()
engine = Engine.load(sys.argv[1], quantize=None if sys.argv[2] == "none" else sys.argv[2],
                     config=EngineConfig(max_batch=1))
loaded = time.perf_counter()
done = engine.complete("def add(a, b):\\n    return", params=SamplingParams(max_tokens=8))
first = time.perf_counter()
print(json.dumps({"import_s": round(imported - t0, 2), "load_s": round(loaded - imported, 2),
                  "first_completion_s": round(first - loaded, 3), "rss_mb": round(rss_mb(), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "weights_mb": round(sum(t.numel() * t.element_size() for t in
                                          list(engine.model.parameters()) + list(engine.model.buffers())) / 2**20, 1),
                  "tokens": done.tokens}))
engine.close()
"""


def measure(model_dir: Path, quantize: str) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, str(model_dir), quantize], capture_output=True, text=True,
                         timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"loading {model_dir} ({quantize}) failed: {run.stderr.strip().splitlines()[-1]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    modes = list(report["modes"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(modes, [report["modes"][m]["load_s"] for m in modes], color=["#888", "#2a7"])
    left.set_title("load time (s)")
    right.bar(modes, [report["modes"][m]["rss_mb"] for m in modes], color=["#888", "#2a7"], label="resident")
    right.bar(modes, [report["modes"][m]["weights_mb"] for m in modes], color="none", edgecolor="k", hatch="//",
              label="weights")
    right.set_title("memory (MB)")
    right.legend()
    fig.suptitle(Path(report["model"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--qwen-0.5b", dest="qwen", type=Path, help="write a random Qwen2.5-Coder-0.5B-shaped model "
                                                                    "here (if absent) and measure it")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    model_dir = args.model
    if args.qwen is not None:
        from .hf_models import FAMILIES, QWEN_0_5B, save_random_model

        if not (args.qwen / "config.json").is_file():
            print(f"writing a random Qwen2.5-Coder-0.5B-shaped model to {args.qwen}", flush=True)
            save_random_model(args.qwen, FAMILIES["qwen2"], QWEN_0_5B, model_vocab=151_936)
        model_dir = args.qwen
    if model_dir is None:
        from engine.model_dir import default_model_dir

        model_dir = default_model_dir()
    report = {"model": str(model_dir), "modes": {}}
    for mode in ("none", "int8"):
        print(f"loading {model_dir} ({'float' if mode == 'none' else mode}) in a fresh process", flush=True)
        report["modes"]["fp32" if mode == "none" else mode] = measure(model_dir, mode)
    write_json(args.out / "load_bench.json", report)
    plot(report, args.out / "load_bench.png")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
