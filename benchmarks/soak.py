"""`code-assistant bench soak`: many editor-like clients for a long time; does anything degrade?

--clients clients (default 100) loop for --duration seconds (default 600) over what editors do:
streamed /v1/completions (most of them), some abandoned after the first chunk (the user typed
on), non-streamed /complete and /v1/events. Every --window seconds it prints a line and records
the requests, errors, latency p50/p95/p99 and the server's resident memory, so a slow leak or a
latency creep shows as a trend. Writes soak.json and soak.png into --out.

Against a running server: --url (and --pid for its memory). Otherwise it starts `code-assistant
serve` on a free loopback port with --model (default: the default model) and stops it afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from .http_bench import PROMPTS, percentiles_ms, start_server
from .report import pyplot, write_json


@dataclass
class Window:
    """One --window of the run."""
    end_s: float
    requests: int
    errors: int
    latency_ms: dict
    ttft_ms: dict
    rss_mb: float | None


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)   # seconds, finished requests
    ttfts: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)       # kind -> count
    kinds: Counter = field(default_factory=Counter)        # request kind -> count
    abandoned: int = 0

    def take(self) -> "Tally":
        """This tally's contents, leaving it empty (for the next window)."""
        taken = Tally(self.latencies, self.ttfts, self.errors, self.kinds, self.abandoned)
        self.latencies, self.ttfts, self.errors, self.kinds, self.abandoned = [], [], Counter(), Counter(), 0
        return taken


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process (Linux /proc), in MiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def stream(client: httpx.AsyncClient, body: dict, tally: Tally, abandon: bool) -> None:
    started, first_text = time.perf_counter(), True
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            tally.errors[f"http_{r.status_code}"] += 1
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                tally.latencies.append(time.perf_counter() - started)
                return
            chunk = json.loads(line[6:])
            if "error" in chunk:
                tally.errors[f"stream_{chunk['error'].get('code')}"] += 1
                return
            if first_text and chunk["choices"] and chunk["choices"][0]["text"]:
                first_text = False
                if abandon:  # the user typed on: the editor hangs up on this completion
                    tally.abandoned += 1
                    return
                tally.ttfts.append(time.perf_counter() - started)
    tally.errors["stream_without_done"] += 1


async def plain(client: httpx.AsyncClient, path: str, body: dict, tally: Tally) -> None:
    started = time.perf_counter()
    r = await client.post(path, json=body)
    if r.status_code != 200:
        tally.errors[f"http_{r.status_code}"] += 1
        return
    tally.latencies.append(time.perf_counter() - started)


async def client_loop(w: int, url: str, headers: dict, deadline: float, tally: Tally, max_tokens: int) -> None:
    rng = random.Random(w)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one editor, one connection
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
        i = 0
        while time.perf_counter() < deadline:
            prompt = PROMPTS[(w + i) % len(PROMPTS)] + f"# {w}.{i}\n"  # distinct: no response cache hits
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.2, "seed": i}
            roll = rng.random()
            kind = ("stream" if roll < 0.65 else "abandoned_stream" if roll < 0.80 else "complete" if roll < 0.92
                    else "event")
            tally.kinds[kind] += 1
            try:
                if kind in ("stream", "abandoned_stream"):
                    await stream(client, body, tally, abandon=kind == "abandoned_stream")
                elif kind == "complete":
                    await plain(client, "/complete", {"code": prompt, "max_tokens": max_tokens, "temperature": 0.2,
                                                      "seed": i}, tally)
                else:
                    await plain(client, "/v1/events", {"id": f"cmpl-soak-{w}-{i}", "event": rng.choice(
                        ["shown", "accepted", "dismissed"]), "language": "python"}, tally)
            except httpx.HTTPError as e:
                tally.errors[type(e).__name__] += 1
            i += 1


async def soak(url: str, headers: dict, clients: int, duration_s: float, window_s: float, max_tokens: int,
               pid: int | None) -> tuple[list[Window], Tally]:
    tally, total = Tally(), Tally()
    started = time.perf_counter()
    deadline = started + duration_s
    windows: list[Window] = []
    workers = [asyncio.ensure_future(client_loop(w, url, headers, deadline, tally, max_tokens))
               for w in range(clients)]

    def close_window() -> None:
        part = tally.take()
        total.latencies += part.latencies
        total.ttfts += part.ttfts
        total.errors.update(part.errors)
        total.kinds.update(part.kinds)
        total.abandoned += part.abandoned
        requests = len(part.latencies) + sum(part.errors.values()) + part.abandoned
        windows.append(Window(round(time.perf_counter() - started, 1), requests, sum(part.errors.values()),
                              percentiles_ms(part.latencies), percentiles_ms(part.ttfts), rss_mb(pid)))
        w = windows[-1]
        print(json.dumps({"t_s": w.end_s, "requests": w.requests, "errors": w.errors,
                          "p50_ms": w.latency_ms["p50"], "p99_ms": w.latency_ms["p99"], "rss_mb": w.rss_mb}),
              file=sys.stderr, flush=True)

    while not all(t.done() for t in workers):
        await asyncio.wait(workers, timeout=window_s)
        close_window()
    for t in workers:
        t.result()  # a bug in the load generator itself surfaces here
    return windows, total


def plot(windows: list[Window], path: Path, title: str) -> None:
    plt = pyplot()

    t = [w.end_s / 60 for w in windows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax1.plot(t, [w.latency_ms[key] for w in windows], style, markersize=3, label=f"latency {key}")
    ax1.set_ylabel("ms")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("latency per window (request to last byte)")
    ax2.plot(t, [w.requests for w in windows], "o-", markersize=3, label="requests")
    ax2.plot(t, [w.errors for w in windows], "x-", color="tab:red", markersize=4, label="errors")
    ax2.set_ylabel("per window")
    ax2.legend(fontsize=8)
    ax3.plot(t, [w.rss_mb for w in windows], "o-", color="tab:green", markersize=3)
    ax3.set_ylabel("server RSS (MiB)")
    ax3.set_xlabel("minutes")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="code-assistant bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="soak a running server instead of starting one")
    p.add_argument("--pid", type=int, help="that server's process id (for its resident memory)")
    p.add_argument("--model", help="model directory for the server this starts (default: the default model)")
    p.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    p.add_argument("--api-key")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--window", type=float, default=15.0, help="seconds per reported window")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default="bench-results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args.model, args.server_arg,
                                                                         Path(tempfile.mkdtemp()) / "server.log")
    pid = args.pid if args.url else proc.pid
    try:
        info = httpx.get(url + "/health", timeout=10).json()
        rss_start = rss_mb(pid)
        windows, total = asyncio.run(soak(url, headers, args.clients, args.duration, args.window, args.max_tokens,
                                          pid))
        rss_end = rss_mb(pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    finished = len(total.latencies)
    report = {
        "benchmark": "soak",
        "url": url if args.url else "started by the benchmark on 127.0.0.1",
        "model": info.get("model"), "model_version": info.get("version"), "device": info.get("device"),
        "settings": {"clients": args.clients, "duration_s": args.duration, "window_s": args.window,
                     "max_tokens": args.max_tokens, "mix": {"stream": 0.65, "abandoned_stream": 0.15,
                                                            "complete": 0.12, "event": 0.08}},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": finished + sum(total.errors.values()) + total.abandoned, "finished": finished,
        "abandoned": total.abandoned, "by_kind": dict(total.kinds),
        "errors": sum(total.errors.values()), "errors_by_kind": dict(total.errors),
        "latency_ms": percentiles_ms(total.latencies), "ttft_ms": percentiles_ms(total.ttfts),
        # After the first window the server has warmed up (allocator pools, caches): the growth
        # from there to the end is what a leak would show.
        "rss_mb_start": rss_start, "rss_mb_after_first_window": windows[0].rss_mb if windows else None,
        "rss_mb_end": rss_end,
        "windows": [asdict(w) for w in windows],
    }
    write_json(out / "soak.json", report)
    plot(windows, out / "soak.png", f"{report['model']}: {args.clients} clients for {args.duration:g} s, "
                                    f"max_tokens={args.max_tokens}; RSS {rss_start} -> {rss_end} MiB")
    print(json.dumps({k: report[k] for k in ("requests", "errors", "latency_ms", "rss_mb_start", "rss_mb_end")}
                     | {"out": str(out / "soak.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
