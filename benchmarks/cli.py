"""`code-assistant bench engine|http|load [...]`: hand the rest of the arguments to that benchmark's main."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "engine": ("benchmarks.engine_bench", "the engine beside transformers, CTranslate2 and llama.cpp on the same weights"),
    "profile": ("benchmarks.decode_profile", "where a batch-1 decode step's time goes, PyTorch path and kernel"),
    "http": ("benchmarks.http_bench", "the HTTP server under concurrent load"),
    "capacity": ("benchmarks.capacity_bench", "open-loop editor load at offered rates, ours beside llama-server"),
    "soak": ("benchmarks.soak", "many editor-like clients for a long time: errors, latency and memory over time"),
    "load": ("benchmarks.load_bench", "load time and resident memory of a model directory, float and int8"),
    "workspace": ("benchmarks.workspace_bench", "the workspace index (build, query, memory) and line completion with it"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        names = "\n".join(f"  {name:9s} {help_}" for name, (_, help_) in BENCHMARKS.items())
        print(f"usage: code-assistant bench {{{','.join(BENCHMARKS)}}} [options]\n{names}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])  # lazily: each pulls in its own dependencies
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
