"""`code-assistant bench http`: load the HTTP API with 1, 10, 50, 100 concurrent clients.

Each client loops over streaming /v1/completions requests for --duration seconds per level and
records latency (request to last byte), time to first token (request to first text) and tokens.
Reports requests/s, tokens/s, p50/p95/p99 latency and TTFT per level, and the cost per 1K generated
tokens on a named cloud instance at its on-demand price (an assumption printed with the result).
Writes http_bench.json and http_bench.png into --out.

Against a running server: --url http://host:8000. Otherwise it starts `code-assistant serve` on a
free loopback port with --model (default: the default model) and stops it afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from .report import pyplot, write_json

# AWS c7i.large (2 vCPU, 4 GiB), Linux on-demand in us-east-1; check the current price before relying on it.
DEFAULT_INSTANCE = "aws-c7i.large"
DEFAULT_PRICE_PER_HOUR = 0.08925

PROMPTS = [
    "def fibonacci(n):\n    ",
    "import json\n\n\ndef load_config(path):\n    with open(path) as f:\n        ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
    "for i, line in enumerate(lines):\n    if line.startswith('#'):\n        ",
    "def parse_args(argv):\n    parser = argparse.ArgumentParser()\n    parser.add_argument(",
    "try:\n    value = int(text)\nexcept ValueError:\n    ",
    "async def fetch(session, url):\n    async with session.get(url) as response:\n        ",
    "def is_prime(n: int) -> bool:\n    if n < 2:\n        return False\n    ",
]


@dataclass
class Sample:
    latency_s: float
    ttft_s: float | None
    tokens: int
    finished_at: float = 0.0


@dataclass
class LevelResult:
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    requests_per_s: float
    tokens_per_s: float
    latency_ms: dict = field(default_factory=dict)
    ttft_ms: dict = field(default_factory=dict)
    cost_per_1k_tokens_usd: float | None = None


def percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "p99": round(float(p[2]), 2)}


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, temperature: float,
                      seed: int) -> Sample:
    started = time.perf_counter()
    ttft, tokens = None, 0
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
            "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    now = time.perf_counter()
    return Sample(now - started, ttft, tokens, now)


async def run_level(url: str, headers: dict, model: str, concurrency: int, duration_s: float, max_tokens: int,
                    temperature: float) -> tuple[LevelResult, list[Sample]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    samples: list[Sample] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
        deadline = time.perf_counter() + duration_s

        async def worker(w: int) -> None:
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                try:
                    samples.append(await one_request(client, model, PROMPTS[(w + i) % len(PROMPTS)], max_tokens,
                                                     temperature, seed=w * 100_000 + i))
                except (httpx.HTTPError, RuntimeError):
                    errors += 1
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    # Throughput counts what finished inside the window, while every client was busy; the requests
    # still running at the deadline (a long tail at high concurrency) count only for latency.
    window = deadline - started
    steady = [s for s in samples if s.finished_at <= deadline]
    tokens = sum(s.tokens for s in steady)
    result = LevelResult(concurrency, round(window, 3), len(samples), errors, round(len(steady) / window, 2),
                         round(tokens / window, 1), percentiles_ms([s.latency_s for s in samples]),
                         percentiles_ms([s.ttft_s for s in samples if s.ttft_s is not None]))
    return result, samples


def cost_per_1k_tokens(tokens_per_s: float, price_per_hour: float) -> float | None:
    return round(price_per_hour / (tokens_per_s * 3600) * 1000, 6) if tokens_per_s > 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "import sys, code_assistant_cli; sys.exit(code_assistant_cli.main())", "serve",
           "--port", str(port), "--no-response-cache", *extra]
    if model:
        cmd += ["--model", model]
    # The server's request log goes to a file: a pipe nobody reads would fill and stall the server.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/ready", log_path, "the server")
    return proc, url


def wait_ready(proc: subprocess.Popen, probe: str, log_path: Path, name: str, timeout: float = 120) -> None:
    """Until `probe` answers 200; a process that exits first or a timeout raises with its log's last line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = (log_path.read_text(errors="replace").strip().splitlines() or [""])[-1]
            raise ChildProcessError(f"{name} exited with {proc.returncode}: {last}")
        try:
            if httpx.get(probe, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s")


def plot(results: list[LevelResult], path: Path, title: str) -> None:
    plt = pyplot()

    c = [r.concurrency for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(c, [r.requests_per_s for r in results], "o-", label="requests/s")
    ax1b = ax1.twinx()
    ax1b.plot(c, [r.tokens_per_s for r in results], "s--", color="tab:orange", label="tokens/s")
    ax1.set_xlabel("concurrent clients")
    ax1.set_ylabel("requests/s")
    ax1b.set_ylabel("generated tokens/s")
    ax1.set_xscale("log")
    ax1.set_title("throughput")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="lower right")
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax2.plot(c, [r.latency_ms[key] for r in results], style, label=f"latency {key}")
    for key, style in (("p50", "o:"), ("p95", "s:")):
        ax2.plot(c, [r.ttft_ms[key] for r in results], style, label=f"TTFT {key}")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("ms")
    ax2.set_title("latency")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="code-assistant bench http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="benchmark a running server instead of starting one")
    p.add_argument("--model", help="model directory for the server this starts (default: the default model)")
    p.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    p.add_argument("--api-key")
    p.add_argument("--concurrency", default="1,10,50,100", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--instance", default=DEFAULT_INSTANCE, help="instance the cost is quoted for")
    p.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR, help="USD, on-demand")
    p.add_argument("--out", default="bench-results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args.model, args.server_arg,
                                                                         Path(tempfile.mkdtemp()) / "server.log")
    try:
        info = httpx.get(url + "/health", timeout=10).json()
        model = httpx.get(url + "/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
        asyncio.run(run_level(url, headers, model, 1, 1.0, args.max_tokens, args.temperature))  # warm-up
        results = []
        for concurrency in levels:
            result, _ = asyncio.run(run_level(url, headers, model, concurrency, args.duration, args.max_tokens,
                                              args.temperature))
            result.cost_per_1k_tokens_usd = cost_per_1k_tokens(result.tokens_per_s, args.price_per_hour)
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    best = max(results, key=lambda r: r.tokens_per_s)
    report = {
        "benchmark": "http",
        "url": url if args.url else "started by the benchmark on 127.0.0.1",
        "model": model, "model_version": info.get("version"), "device": info.get("device"),
        "settings": {"max_tokens": args.max_tokens, "temperature": args.temperature, "duration_s": args.duration,
                     "endpoint": "/v1/completions (stream)", "prompts": len(PROMPTS)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "assumptions": {
            "instance": args.instance, "price_per_hour_usd": args.price_per_hour,
            "cost_basis": "price per hour / (generated tokens per second at that level x 3600) x 1000, assuming the "
                          "instance sustains the throughput measured on this machine (the load generator ran on "
                          "the same machine and took some of its CPU)"},
        "levels": [asdict(r) for r in results],
        "best": {"concurrency": best.concurrency, "tokens_per_s": best.tokens_per_s,
                 "cost_per_1k_tokens_usd": best.cost_per_1k_tokens_usd},
    }
    write_json(out / "http_bench.json", report)
    plot(results, out / "http_bench.png", f"{model} ({info.get('device')}), max_tokens={args.max_tokens}, "
                                          f"{args.duration:g}s per level; cost on {args.instance} "
                                          f"at ${args.price_per_hour}/h")
    print(json.dumps({"out": str(out / "http_bench.json"), "png": str(out / "http_bench.png"), **report["best"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
