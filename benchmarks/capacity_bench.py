"""`code-assistant bench capacity`: how many editors one server holds, loaded the way editors load it.

Open loop: `--users` editors each type forward through a file of their own (the standard library's
.py files, a different one per user) and ask for an inline completion after a random pause
(`--gap` seconds on average, exponential or jittered). A request leaves at its scheduled time
whatever the server is doing (a dispatcher starts each one as a task at its absolute time and never
waits for an answer), so a slow server meets a growing queue, as it would in a team. Each request is
fill-in-the-middle (`--before` characters before the cursor, `--after` after), streamed, greedy,
`--tokens` tokens. Consecutive prompts of one user share their prefix the way keystrokes make them:
the cursor moves on by what the user typed during the pause.

Each offered rate in `--rates` (default: users / gap) runs against our server (`code-assistant
serve`, started here on a loopback port) and llama.cpp's `llama-server` (built by
scripts/build-llama-cpp.sh; `-np` slots, continuous batching, `cache_prompt`) on the same weights
(the shipped model as GGUF q8_0), alternating which goes first, with the same requests: ours on
/v1/completions with the whole text (prompt + suffix; the engine trims it to the model's context),
llama-server on /completion with the token ids our engine's PromptBuilder makes of that text (see
`LlamaServer`), so that both models see the same tokens.

Per rate and server: p50/p95/p99 to the first chunk and to the last token, errors by kind (429,
5xx, other 4xx, timeout, connection), achieved rate and how late the dispatcher sent. The goal line:
the highest offered rate each holds (p95 to the last token < `--slo-ms`, no errors). Writes
capacity.json and capacity.png into --out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from .http_bench import free_port, start_server, wait_ready
from .report import pyplot, write_json

TYPING_CHARS_PER_S = 5.0   # ~60 words a minute: how far the cursor moves during a pause
LLAMA_CPP_HOME = Path.home() / ".cache" / "code-assistant" / "llama.cpp-0.3.36"


@dataclass(frozen=True)
class EditorRequest:
    at: float           # seconds after the point's start
    user: int
    prefix: str
    suffix: str


@dataclass
class Sample:
    user: int
    late_s: float                   # sent this long after its scheduled time (the load generator's own lag)
    first_chunk_s: float | None     # from sending to the first chunk with text
    last_token_s: float | None      # from sending to the end of the stream
    tokens: int = 0
    error: str | None = None        # "429", "5xx", "4xx", "timeout", "connection"


@dataclass
class PointResult:
    server: str
    offered_rate: float
    duration_s: float
    scheduled: int
    answered: int
    errors: int
    errors_by_kind: dict
    achieved_rate: float
    first_chunk_ms: dict = field(default_factory=dict)
    last_token_ms: dict = field(default_factory=dict)
    mean_tokens: float = 0.0
    late_ms_p99: float = 0.0
    holds: bool = False
    # CPU seconds the server process used during the point, per answered request (ms): how much
    # work a request costs, steadier than latency on a shared machine.
    server_cpu_ms_per_request: float | None = None
    # Requests the same editor's next one replaced before they finished (HTTP 409, or a stream that
    # ended with a `superseded` error): an editor drops those itself. Neither answered nor errors.
    superseded: int = 0


def editor_files(users: int, min_chars: int) -> list[str]:
    """The texts users type through: stdlib .py files of at least `min_chars`, one per user, spread
    over the whole library in path order (the same files on every run of one Python)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(lib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= min_chars:
            texts.append(text)
    if len(texts) < users:
        raise ValueError(f"only {len(texts)} stdlib files have {min_chars}+ characters: fewer users or context")
    step = len(texts) / users
    return [texts[int(i * step)] for i in range(users)]


def schedule(texts: list[str], rate: float, duration_s: float, before: int, after: int, gaps: str = "exponential",
             seed: int = 0) -> list[EditorRequest]:
    """Every request of one point, in sending order: user u types through texts[u], pausing a mean
    of len(texts) / rate seconds between requests."""
    rng = random.Random(seed)
    mean_gap = len(texts) / rate
    requests = []

    def pause() -> float:
        return rng.expovariate(1 / mean_gap) if gaps == "exponential" else mean_gap * rng.uniform(0.5, 1.5)

    for user, text in enumerate(texts):
        cursor = rng.randrange(before, len(text) - after)
        # users do not start in step: the first request comes a pause (exponential: memoryless, so
        # the rate is right from the start) or a uniform share of one (jittered) after the start
        at = pause() if gaps == "exponential" else rng.uniform(0, mean_gap)
        while at < duration_s:
            requests.append(EditorRequest(at, user, text[cursor - before:cursor], text[cursor:cursor + after]))
            gap = pause()
            cursor += max(1, round(gap * TYPING_CHARS_PER_S))
            if cursor > len(text) - after:
                cursor = before         # the end of the file: the user opens it again at the top
            at += gap
    return sorted(requests, key=lambda r: r.at)


class Target:
    """One server under load: how a request is sent and its stream read."""

    name: str
    url: str

    def request(self, r: EditorRequest) -> tuple[str, dict]:
        raise NotImplementedError

    def chunk(self, event: dict) -> tuple[str, int | None]:
        """(text in this event, completion tokens if this event says so)."""
        raise NotImplementedError


class Ours(Target):
    name = "code-assistant"

    def __init__(self, url: str, tokens: int):
        self.url, self.tokens = url, tokens

    def request(self, r):
        return "/v1/completions", {"prompt": r.prefix, "suffix": r.suffix, "max_tokens": self.tokens,
                                   "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                                   "user": f"editor-{r.user}"}

    def chunk(self, event):
        text = event["choices"][0]["text"] if event.get("choices") else ""
        return text, (event.get("usage") or {}).get("completion_tokens")


class LlamaServer(Target):
    """llama-server's /completion with the prompt as token ids: the FIM layout our engine's
    PromptBuilder makes of the same text (without token healing), within the model's context less
    the tokens to generate. Not /infill with the text: llama.cpp cannot split text as our tokenizer
    does (the GGUF records GPT-2's pre-tokenizer), so its own ids of a text differ from the model's,
    and more of them overflow the context (268 tokens where the model's tokenizer counts 248)."""

    name = "llama-server"

    def __init__(self, url: str, tokens: int, prompts: dict[EditorRequest, list[int]]):
        self.url, self.tokens, self.prompts = url, tokens, prompts

    def request(self, r):
        return "/completion", {"prompt": self.prompts[r], "n_predict": self.tokens, "temperature": 0, "top_k": 1,
                               "stream": True, "cache_prompt": True}

    def chunk(self, event):
        return event.get("content", ""), event.get("tokens_predicted") if event.get("stop") else None


SUPERSEDED = "superseded"  # the same editor's newer request replaced it: what an editor cancels itself


def error_kind(status: int) -> str:
    if status == 409:
        return SUPERSEDED
    return "429" if status == 429 else "5xx" if status >= 500 else "4xx"


async def send(client: httpx.AsyncClient, target: Target, r: EditorRequest, due: float, timeout: float) -> Sample:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    sample = Sample(r.user, sent - due, None, None)
    path, body = target.request(r)

    async def read() -> None:
        chunks = 0
        async with client.stream("POST", target.url + path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                sample.error = error_kind(response.status_code)
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:  # the stream ended early (superseded by the editor's next request, or failed)
                    code = (event["error"] or {}).get("code")
                    sample.error = SUPERSEDED if code == SUPERSEDED else "stream error"
                    return
                text, tokens = target.chunk(event)
                if text:
                    chunks += 1
                    if sample.first_chunk_s is None:
                        sample.first_chunk_s = loop.time() - sent
                if tokens is not None:
                    sample.tokens = tokens
        sample.last_token_s = loop.time() - sent
        sample.tokens = sample.tokens or chunks

    try:
        await asyncio.wait_for(read(), timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        sample.error = "timeout"
    except httpx.HTTPError:
        sample.error = "connection"
    return sample


async def run_point(target: Target, requests: list[EditorRequest], timeout: float) -> tuple[list[Sample], float]:
    """Send every request at its time; (samples, seconds from the first send to the last answer)."""
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        start = loop.time() + 0.2
        tasks = []
        for r in requests:
            due = start + r.at
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            tasks.append(asyncio.create_task(send(client, target, r, due, timeout)))
        samples = await asyncio.gather(*tasks)
    return samples, loop.time() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50": round(float(p[0]), 1), "p95": round(float(p[1]), 1), "p99": round(float(p[2]), 1)}


def summarise(server: str, rate: float, duration_s: float, samples: list[Sample], elapsed: float,
              slo_ms: float) -> PointResult:
    ok = [s for s in samples if s.error is None]
    kinds: dict[str, int] = {}
    for s in samples:
        if s.error and s.error != SUPERSEDED:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    last = percentiles_ms([s.last_token_s for s in ok])
    superseded = sum(s.error == SUPERSEDED for s in samples)
    errors = len(samples) - len(ok) - superseded
    return PointResult(server, rate, duration_s, len(samples), len(ok), errors, kinds,
                       round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
                       percentiles_ms([s.first_chunk_s for s in ok if s.first_chunk_s is not None]), last,
                       round(float(np.mean([s.tokens for s in ok])), 1) if ok else 0.0,
                       round(float(np.percentile([s.late_s for s in samples], 99)) * 1000, 1) if samples else 0.0,
                       bool(ok) and errors == 0 and last["p95"] is not None and last["p95"] < slo_ms, None,
                       superseded)


def held_rate(results: list[PointResult], server: str) -> float | None:
    """The highest offered rate `server` held, below which it held every rate tried."""
    held = None
    for r in sorted((r for r in results if r.server == server), key=lambda r: r.offered_rate):
        if not r.holds:
            break
        held = r.offered_rate
    return held


def start_llama_server(binary: Path, gguf: Path, slots: int, context: int, threads: int,
                       log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # -c is the whole KV cache, shared out among the slots: each slot gets the model's context.
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(context * slots), "-t", str(threads), "-cb"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", log_path, "llama-server")
    return proc, url


def shipped_gguf(model: str | None, work: Path, llama_home: Path) -> Path:
    """The served model as llama.cpp's q8_0 GGUF, made once with the converter of the build."""
    from .bench_models import gguf_file, hf_dir

    return gguf_file(hf_dir(model or "default", work), work, src=llama_home / "src")


def plot(results: list[PointResult], path: Path, title: str, slo_ms: float) -> None:
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    for server, color in (("code-assistant", "tab:blue"), ("llama-server", "tab:orange")):
        rs = sorted((r for r in results if r.server == server), key=lambda r: r.offered_rate)
        if not rs:
            continue
        x = [r.offered_rate for r in rs]
        for key, style in (("p50", "o:"), ("p95", "s-"), ("p99", "^--")):
            ax1.plot(x, [r.last_token_ms[key] or float("nan") for r in rs], style, color=color,
                     label=f"{server} {key}")
            ax2.plot(x, [r.first_chunk_ms[key] or float("nan") for r in rs], style, color=color,
                     label=f"{server} {key}")
        ax3.plot(x, [r.achieved_rate for r in rs], "o-", color=color, label=f"{server} achieved")
        ax3.bar([v + (0.4 if server == "llama-server" else -0.4) for v in x], [r.errors / r.duration_s for r in rs],
                width=0.8, color=color, alpha=0.35, label=f"{server} errors/s")
    for ax, what in ((ax1, "to the last token"), (ax2, "to the first chunk")):
        ax.axhline(slo_ms, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("offered requests/s")
        ax.set_ylabel("ms")
        ax.set_title(f"latency {what}")
        ax.legend(fontsize=7)
    top = max(r.offered_rate for r in results)
    ax3.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    ax3.set_xlabel("offered requests/s")
    ax3.set_ylabel("requests/s")
    ax3.set_title("achieved rate and errors")
    ax3.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="code-assistant bench capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory for both servers (default: the shipped model)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--gap", type=float, default=3.0, help="mean seconds between one user's requests")
    p.add_argument("--gaps", choices=("exponential", "jittered"), default="exponential",
                   help="pauses drawn from an exponential, or uniformly within +-50%% of --gap")
    p.add_argument("--rates", help="offered requests/s, comma-separated (each sets the gap to users / rate); "
                                   "default: users / gap")
    p.add_argument("--before", type=int, default=4000, help="characters before the cursor")
    p.add_argument("--after", type=int, default=1000, help="characters after the cursor")
    p.add_argument("--tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending per rate and server")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds after which a request counts as timed out")
    p.add_argument("--slo-ms", type=float, default=200.0, help="the p95 to the last token a rate must keep to hold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    p.add_argument("--no-llama-server", action="store_true", help="only ours")
    p.add_argument("--llama-home", default=os.environ.get("LLAMA_CPP_HOME", str(LLAMA_CPP_HOME)),
                   help="scripts/build-llama-cpp.sh's output folder (bin/llama-server, src/)")
    p.add_argument("--llama-server", help="the llama-server binary (default: bin/llama-server of --llama-home)")
    p.add_argument("--slots", type=int, default=16, help="llama-server's parallel slots (-np)")
    # One thread: ggml's threads spin at every barrier, and on cores shared with other work a
    # spinning thread waits for one that is not running: here -t 2 took 1.2-11 s a request and -t 1
    # 0.1-0.3 s (same request, the machine's load average ~11).
    p.add_argument("--threads", type=int, default=1, help="llama-server's threads (-t)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "code-assistant" / "bench"),
                   help="where the GGUF copy of the model is kept")
    p.add_argument("--out", default="bench-results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()] if args.rates else [args.users / args.gap]
    except ValueError:
        print(f"code-assistant bench capacity: --rates must be numbers, got {args.rates!r}", file=sys.stderr)
        return 2
    if not rates or min(rates) <= 0 or args.users < 1 or args.gap <= 0 or args.duration <= 0:
        print("code-assistant bench capacity: users, gap, rates and duration must be positive", file=sys.stderr)
        return 2
    llama_home = Path(args.llama_home)
    binary = Path(args.llama_server) if args.llama_server else llama_home / "bin" / "llama-server"
    if not args.no_llama_server and not binary.is_file():
        print(f"code-assistant bench capacity: no {binary}; run scripts/build-llama-cpp.sh first, or pass "
              "--no-llama-server", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the servers it started stop too
    logs = Path(tempfile.mkdtemp(prefix="capacity-"))

    from engine.model_dir import default_model_dir, load_tokenizer_from_dir, read_model_dir
    from engine.prompt import PromptBuilder

    model_dir = Path(args.model) if args.model else default_model_dir()
    context = read_model_dir(model_dir).config.block_size
    try:
        texts = editor_files(args.users, 2 * (args.before + args.after))
    except ValueError as e:
        print(f"code-assistant bench capacity: {e}", file=sys.stderr)
        return 2
    points = {rate: schedule(texts, rate, args.duration, args.before, args.after, args.gaps, args.seed + i)
              for i, rate in enumerate(rates)}

    servers: list[tuple[Target, subprocess.Popen]] = []
    results: list[PointResult] = []
    try:
        # Every simulated editor connects from 127.0.0.1: the per-address cap (100, for probes' sake)
        # would turn a slow point into 503s and closed connections.
        serve_args = ["--no-response-cache", "--max-connections-per-client", "10000", *args.server_arg]
        proc, url = start_server(str(model_dir), serve_args, logs / "ours.log")
        servers.append((Ours(url, args.tokens), proc))
        if not args.no_llama_server:
            builder = PromptBuilder(load_tokenizer_from_dir(model_dir), context)
            prompts = {r: builder.build(r.prefix, r.suffix, args.tokens) for requests in points.values()
                       for r in requests}
            gguf = shipped_gguf(args.model, Path(args.work), llama_home)
            proc, url = start_llama_server(binary, gguf, args.slots, context, args.threads, logs / "llama.log")
            servers.append((LlamaServer(url, args.tokens, prompts), proc))
        for target, _ in servers:  # warm-up: first requests pay for lazy loading and compiled kernels
            asyncio.run(run_point(target, points[rates[0]][:5], args.timeout))
        for i, rate in enumerate(rates):
            order = servers if i % 2 == 0 else servers[::-1]
            for target, proc in order:
                cpu_before = cpu_seconds(proc.pid)
                samples, elapsed = asyncio.run(run_point(target, points[rate], args.timeout))
                result = summarise(target.name, rate, args.duration, samples, elapsed, args.slo_ms)
                if result.answered:
                    cpu_ms = (cpu_seconds(proc.pid) - cpu_before) * 1000 / result.answered
                    result.server_cpu_ms_per_request = round(cpu_ms, 2)
                results.append(result)
                print(json.dumps(asdict(result)), flush=True)
                time.sleep(0.5)   # the servers settle (every answer of the point is already in)
    finally:
        for _, proc in servers:
            proc.terminate()
            proc.wait(timeout=60)

    ours_held = held_rate(results, "code-assistant")
    llama_held = held_rate(results, "llama-server") if not args.no_llama_server else None
    report = {
        "benchmark": "capacity",
        "model": str(model_dir),
        "settings": {"users": args.users, "gap_s": args.gap, "gaps": args.gaps, "before_chars": args.before,
                     "after_chars": args.after, "tokens": args.tokens, "duration_s": args.duration,
                     "timeout_s": args.timeout, "slo_ms": args.slo_ms, "seed": args.seed,
                     "typing_chars_per_s": TYPING_CHARS_PER_S, "greedy": True, "streamed": True,
                     "ours": {"endpoint": "/v1/completions (prompt + suffix)",
                              "serve_args": serve_args},
                     "llama_server": None if args.no_llama_server else {
                         "endpoint": "/completion", "slots": args.slots, "context_per_slot": context,
                         "threads": args.threads, "cache_prompt": True, "continuous_batching": True,
                         "weights": "the same model as GGUF q8_0",
                         "prompt": "token ids: our engine's PromptBuilder layout of the same text (FIM, within "
                                   f"the {context}-token context less {args.tokens} to generate), no healing"}},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_generator": "on the same machine as the servers"},
        "points": [asdict(r) for r in results],
        "goal": {"held_rate": {"code-assistant": ours_held, "llama-server": llama_held},
                 "ratio_ours_to_llama_server": round(ours_held / llama_held, 2) if ours_held and llama_held else None,
                 "meaning": f"the highest offered rate (of those tried, all lower ones held too) with p95 to "
                            f"the last token < {args.slo_ms:g} ms and no errors; the issue wants a ratio >= 1.5"},
    }
    write_json(out / "capacity.json", report)
    plot(results, out / "capacity.png", f"{args.users} editors, {args.before}/{args.after} chars around the cursor, "
                                        f"{args.tokens} tokens, {args.duration:g} s per point, open loop; "
                                        f"{model_dir.name}", args.slo_ms)
    print(json.dumps({"out": str(out / "capacity.json"), "png": str(out / "capacity.png"), **report["goal"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
