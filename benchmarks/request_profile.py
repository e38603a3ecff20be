"""Where one request's milliseconds go, end to end through the real server.

Starts `code-assistant serve` (the shipped model unless --model), samples it with py-spy (`pip
install py-spy`; it attaches to the server's pid) while it answers the capacity benchmark's
requests (fill-in-the-middle, --before/--after characters around the cursor, streamed, greedy,
--tokens tokens), first one at a time (one editor, each request after the previous answer) and then
under open-loop load (--rate requests/s from --users editors). Every sample of a busy thread is put in the
category of the innermost frame on its stack that belongs to one (CATEGORIES, in order), so a torch
kernel called from the model counts as the model's forward, a regex called from the tokenizer as
tokenising; forwards are split into prefill and decode by the scheduler method above them.

Prints, per phase, a table of busy milliseconds per admitted request by category: py-spy's samples
of threads that were running or ready to run (the samples that wait for work left out), over all
threads, so on 2 cores they can exceed wall time, and on a crowded machine they include time a
ready thread waited for a core beside the requests' measured latency; writes capacity_profile.json
and the raw folded stacks (capacity_profile_<phase>.txt) into --out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .capacity_bench import Ours, editor_files, percentiles_ms, run_point, schedule, send
from .http_bench import start_server
from .report import write_json

# (category, substrings of a frame "function (file:line)"), matched leaf-first; the first frame
# that matches any category names the sample.
CATEGORIES = [
    ("tokenising (engine/tokenizer.py, tiktoken)", ("engine/tokenizer.py", "tiktoken/", "regex/")),
    ("prompt building (engine/prompt.py)", ("engine/prompt.py",)),
    ("token healing (engine/healing.py)", ("engine/healing.py",)),
    ("cache model: suffix indexes (engine/suffix_index.py)", ("engine/suffix_index.py",)),
    ("cache model: mixing logits (engine/cache_model.py)", ("engine/cache_model.py",)),
    ("drafts (engine/draft.py)", ("engine/draft.py",)),
    ("loop guard (engine/repetition.py)", ("engine/repetition.py",)),
    ("sampling / choosing (engine/sampling.py)", ("engine/sampling.py",)),
    ("KV blocks (engine/kv_cache.py)", ("engine/kv_cache.py",)),
    ("model forward", ("engine/model.py", "engine/runner.py", "engine/fast_decode.py", "torch/",
                       "engine/kernels.py")),
    ("scheduler: steps, tokens out to the streams (engine/engine.py, scheduler.py, output.py, mailbox.py)",
     ("engine/engine.py", "engine/scheduler.py", "engine/output.py", "engine/mailbox.py")),
    ("completion route, SSE framing (http_api/routes, generation.py)", ("http_api/routes/", "http_api/generation.py",
                                                                       "sse_starlette", "json/")),
    ("request log, metrics, middleware (http_api)", ("http_api/", "prometheus_client/", "logging/")),
    ("HTTP server and framework (uvicorn, h11, starlette, fastapi, pydantic)", ("uvicorn/", "h11/", "httptools",
                                                                               "starlette/", "fastapi/",
                                                                               "pydantic")),
    ("event loop and thread hand-offs (asyncio, threading, queue)", ("asyncio/", "selectors", "threading",
                                                                     "queue.py", "concurrent/")),
]
FORWARD = "model forward"
# py-spy --nonblocking cannot always tell a waiting thread from a running one: samples whose
# innermost frame waits for work are counted apart, not as busy. uvloop's loop is C under
# asyncio's Runner.run, so a sample that ends there is (mostly) its epoll wait; a thread pool
# worker's sample that ends in _worker waits in its queue's C get.
IDLE = "idle: waiting for work (epoll, Condition/Event.wait, uvloop, an idle thread pool)"
IDLE_LEAVES = ("EpollSelector.select (", "Condition.wait (", "Event.wait (", "_wait_for_tstate_lock (",
               "Runner.run (asyncio/runners.py", "_worker (concurrent/futures/thread.py")
# The scheduler thread hands every chunk to the event loop with call_soon_threadsafe, which writes
# to the loop's self-pipe and then waits for the GIL while the loop handles the chunk.
HANDOFF = "chunk hand-off to the event loop (Engine.stream's call_soon_threadsafe: self-pipe + GIL)"


def categorise(stack: list[str]) -> str:
    if stack and stack[-1].startswith(IDLE_LEAVES):
        return IDLE
    if stack and stack[-1].startswith("BaseSelectorEventLoop._write_to_self ("):
        return HANDOFF
    for frame in reversed(stack):   # the innermost frame first
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                if name == FORWARD:
                    return forward_kind(stack)
                return name
    return "other"


def forward_kind(stack: list[str]) -> str:
    text = ";".join(stack)
    if "prefill_step (engine/scheduler.py" in text:
        return "model forward: prefill (Scheduler.prefill_step)"
    if "decode_step (engine/scheduler.py" in text:
        return "model forward: decode steps (Scheduler.decode_step)"
    return "model forward: other (warm-up, thread measurement)"


def read_folded(path: Path) -> dict[str, int]:
    """py-spy's raw output (one `frame;frame;... count` a line) as samples per category."""
    totals: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        stack = stack_text.split(";")[1:]   # the first entry names the thread (--threads)
        name = categorise(stack)
        totals[name] = totals.get(name, 0) + int(count)
    return totals


async def one_editor(url: str, requests, tokens: int, timeout: float):
    """One editor that waits for each answer before its next keystroke's request."""
    import httpx

    target = Ours(url, tokens)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=timeout) as client:
        return [await send(client, target, r, loop.time(), timeout) for r in requests]


ENGINE_COUNTERS = ("engine_prefix_cache_hits", "engine_prefix_cache_lookups", "engine_draft_tokens_proposed",
                   "engine_draft_tokens_accepted")


def engine_counters(url: str) -> dict[str, float]:
    """The engine's prefix-cache and draft counters from /metrics (Prometheus text)."""
    import httpx

    counters = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name.removesuffix("_total") in ENGINE_COUNTERS:
            counters[name.removesuffix("_total")] = float(value)
    return counters


def profile_phase(pid: int, out: Path, name: str, rate_hz: int, run) -> tuple[list, float, dict[str, int]]:
    folded = out / f"capacity_profile_{name}.txt"
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                            "--pid", str(pid), "--rate", str(rate_hz), "--threads", "--nonblocking", "--format",
                            "raw", "--output", str(folded)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    samples = run()
    wall = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)   # py-spy writes its output on SIGINT
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    if not folded.is_file():
        raise SystemExit(f"py-spy wrote nothing: {spy.stderr.read().decode(errors='replace')[-400:]}")
    return samples, wall, read_folded(folded)


def table(name: str, samples: list, wall: float, totals: dict[str, int], rate_hz: int, counters: dict) -> dict:
    ok = [s for s in samples if s.error is None]
    # Per request the engine admitted (its prefix-cache lookups): under overload many time out at
    # the client after the engine spent their prefill, and that cost belongs to them too.
    n = max(1, int(counters.get("engine_prefix_cache_lookups", 0)) or len(ok))
    per_request = {k: round(v / rate_hz * 1000 / n, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
                   if k != IDLE}
    return {"phase": name, "requests": len(samples), "answered": len(ok), "wall_s": round(wall, 1),
            "last_token_ms": percentiles_ms([s.last_token_s for s in ok]),
            "first_chunk_ms": percentiles_ms([s.first_chunk_s for s in ok if s.first_chunk_s is not None]),
            "mean_tokens": round(float(np.mean([s.tokens for s in ok])), 1) if ok else 0.0,
            "engine_admitted": n, "idle_ms_per_request": round(totals.get(IDLE, 0) / rate_hz * 1000 / n, 2),
            "busy_ms_per_request": per_request, "busy_ms_per_request_total": round(sum(per_request.values()), 2),
            "engine_counters": counters}


def print_table(result: dict) -> None:
    print(f"\n## {result['phase']}: {result['answered']} of {result['requests']} answered, {result['engine_admitted']} "
          f"admitted by the engine; to the last token "
          f"p50 {result['last_token_ms']['p50']} ms, p95 {result['last_token_ms']['p95']} ms; "
          f"busy {result['busy_ms_per_request_total']} ms a request; engine counters {result['engine_counters']}\n")
    print("| where | busy ms a request | share |\n| --- | ---: | ---: |")
    total = result["busy_ms_per_request_total"] or 1
    for name, ms in result["busy_ms_per_request"].items():
        print(f"| {name} | {ms} | {100 * ms / total:.0f}% |")


def keystroke_reuse(model_dir: Path, requests, tokens: int, block_tokens: int = 16) -> dict:
    """How much of each prompt the KV pool could reuse from the same user's previous one: the
    engine's own PromptBuilder lays out consecutive requests of one user, and the pool reuses the
    whole blocks of their common first tokens (EngineConfig.kv_block_tokens; 16 by default)."""
    from engine.model_dir import load_tokenizer_from_dir, read_model_dir
    from engine.prompt import PromptBuilder

    builder = PromptBuilder(load_tokenizer_from_dir(model_dir), read_model_dir(model_dir).config.block_size)
    previous: dict[int, list[int]] = {}
    reusable, total, whole_misses = 0, 0, 0
    for r in requests:
        ids = builder.build(r.prefix, r.suffix, tokens)
        if r.user in previous:
            old, common = previous[r.user], 0
            while common < min(len(old), len(ids)) and old[common] == ids[common]:
                common += 1
            reusable += common // block_tokens * block_tokens
            total += len(ids)
            whole_misses += common < block_tokens
        previous[r.user] = ids
    return {"prompts": len(requests), "prompt_tokens_reusable_share": round(reusable / total, 3) if total else None,
            "prompts_sharing_no_block": whole_misses, "block_tokens": block_tokens}


def submit_costs(model_dir: Path, requests, tokens: int) -> dict:
    """Median milliseconds of the per-request work before the first forward, each step alone in
    this process (perf counters, no server): what Engine.submit does for every keystroke."""
    from engine.draft import LiveIndex
    from engine.healing import split_heal
    from engine.model_dir import load_tokenizer_from_dir, read_model_dir
    from engine.prompt import PromptBuilder
    from engine.repetition import RepetitionGuard
    from engine.suffix_index import SuffixIndex

    tokenizer = load_tokenizer_from_dir(model_dir)
    builder = PromptBuilder(tokenizer, read_model_dir(model_dir).config.block_size)
    prefix_ids = {id(r): tokenizer.encode(r.prefix) for r in requests}  # what the steps after it start from
    prompts = {id(r): builder.build(r.prefix, r.suffix, tokens, prompt_ids=prefix_ids[id(r)]) for r in requests}
    steps = {
        "token healing split (engine/healing.py split_heal)": lambda r: split_heal(r.prefix, tokenizer.split),
        "tokenise the text before the cursor, once for the prompt and the cache model (engine/tokenizer.py)":
            lambda r: tokenizer.encode(r.prefix),
        "prompt: lay out, the suffix tokenised (engine/prompt.py PromptBuilder.build)":
            lambda r: builder.build(r.prefix, r.suffix, tokens, prompt_ids=prefix_ids[id(r)]),
        "cache model: suffix indexes of prefix and suffix, the suffix tokenised (engine/suffix_index.py)":
            lambda r: (SuffixIndex.build([prefix_ids[id(r)]]), SuffixIndex.build([tokenizer.encode(r.suffix)])),
        "loop guard setup (engine/repetition.py RepetitionGuard.for_prompt)":
            lambda r: RepetitionGuard.for_prompt(r.prefix, r.suffix),
        "draft index of the prompt (engine/draft.py LiveIndex)": lambda r: LiveIndex(prompts[id(r)]),
    }
    costs = {}
    for name, step in steps.items():
        times = []
        for r in requests:
            started = time.perf_counter()
            step(r)
            times.append(time.perf_counter() - started)
        costs[name] = round(float(np.median(times)) * 1000, 3)
    return costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.request_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--before", type=int, default=4000)
    p.add_argument("--after", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--alone", type=int, default=80, help="requests of the one-at-a-time phase")
    p.add_argument("--rate", type=float, default=17.0, help="offered requests/s of the loaded phase (0: skip it)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the loaded phase")
    p.add_argument("--sample-rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = editor_files(args.users, 2 * (args.before + args.after))
    # one editor typing through one file, each keystroke's request after the previous answer
    alone = schedule(texts[:1], 1.0, 3.0 * args.alone, args.before, args.after, seed=1)[:args.alone]
    loaded = schedule(texts, args.rate, args.duration, args.before, args.after, seed=2) if args.rate > 0 else []
    from engine.model_dir import default_model_dir

    reuse = keystroke_reuse(Path(args.model) if args.model else default_model_dir(), alone, args.tokens)
    print(f"keystroke reuse (one editor, {len(alone)} requests): {reuse}")
    costs = submit_costs(Path(args.model) if args.model else default_model_dir(), alone, args.tokens)
    print("per-request steps before the first forward, median ms (in-process):", json.dumps(costs, indent=1))
    proc, url = start_server(args.model, ["--no-response-cache", *args.server_arg],
                             Path(tempfile.mkdtemp(prefix="profile-")) / "server.log")
    results = []
    try:
        asyncio.run(one_editor(url, alone[:5], args.tokens, 30))   # warm-up
        phases = [("alone", "alone", lambda: asyncio.run(one_editor(url, alone, args.tokens, 30)))]
        if loaded:
            phases.append((f"{args.rate:g} req/s", f"{args.rate:g}rps",
                           lambda: asyncio.run(run_point(Ours(url, args.tokens), loaded, 30))[0]))
        for name, file_name, run in phases:
            before = engine_counters(url)
            samples, wall, totals = profile_phase(proc.pid, out, file_name, args.sample_rate, run)
            after = engine_counters(url)
            counters = {k: after[k] - before.get(k, 0.0) for k in after}
            results.append(table(name, samples, wall, totals, args.sample_rate, counters))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for result in results:
        print_table(result)
    write_json(out / "capacity_profile.json", {
        "benchmark": "request profile", "model": args.model or "shipped (models/default)",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "method": "py-spy samples of the server process (all threads, threads waiting for work left out, "
                  "--nonblocking), each put in the category of its innermost frame that has one; ms = samples / "
                  "sample rate / requests the engine admitted (prefix-cache lookups; a request preempted and "
                  "readmitted counts twice)",
        "keystroke_reuse": reuse, "submit_steps_median_ms": costs, "phases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
