"""Scale-out rehearsal on one machine: `code-assistant serve` replicas behind nginx (standing in
for the Kubernetes Service), bounded load, one replica killed mid-run.

What it shows: clients see no failed requests beyond those in flight when the replica died,
because nginx retries a completion on another replica when the connection fails (completions
have no side effects, so `proxy_next_upstream ... non_idempotent` is safe) and stops sending to
the dead one, which is what readiness probes and the Service do in a cluster. With
--canary-model a third replica serves another model with its own nginx weight, the local form
of the canary Deployment; the report gives each model's share of the traffic.

    python deploy/scripts/rehearse_scale_out.py --model models/default [--canary-model models/next]

Prints a JSON report; exit status 0 when no request failed beyond those in flight at the kill.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from local_stack import Process, StackError, start_nginx, start_servers

PROMPTS = [
    "def parse_args(argv):\n    ",
    "import json\n\ndef load_config(path):\n    ",
    "class Cache:\n    def __init__(self, size):\n        ",
    "for line in open(path):\n    ",
    "def fibonacci(n):\n    ",
    "async def fetch(session, url):\n    ",
]


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None      # None: no HTTP answer at all
    upstream: str           # nginx's $upstream_addr: "127.0.0.1:p" or "a, b" after a retry
    model: str
    tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    requests: int = 4000      # at most this many
    duration_s: float = 10.0  # and for at most this long
    concurrency: int = 8
    max_tokens: int = 8


async def one_request(client: httpx.AsyncClient, i: int, load: Load, clock: float) -> Outcome:
    body = {"prompt": PROMPTS[i % len(PROMPTS)] + f"# request {i}\n", "max_tokens": load.max_tokens,
            "temperature": 0.8}
    started = time.monotonic() - clock
    try:
        r = await client.post("/v1/completions", json=body)
    except httpx.HTTPError as e:
        return Outcome(started, time.monotonic() - clock, None, "", "", 0, f"{type(e).__name__}: {e}")
    finished = time.monotonic() - clock
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    tokens = (data.get("usage") or {}).get("completion_tokens", 0) if r.status_code == 200 else 0
    error = "" if r.status_code == 200 else str(data.get("error", r.text[:200]))
    return Outcome(started, finished, r.status_code, r.headers.get("x-upstream", ""), data.get("model", ""),
                   tokens, error)


async def drive(base_url: str, load: Load, kill_after_s: float, kill) -> tuple[list[Outcome], dict]:
    """Closed-loop load from `concurrency` clients; `kill()` runs once, `kill_after_s` into the run."""
    outcomes: list[Outcome] = []
    in_flight: set[int] = set()
    next_id = 0
    clock = time.monotonic()
    kill_info: dict = {}

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_id
        while next_id < load.requests and time.monotonic() - clock < load.duration_s:
            i = next_id
            next_id += 1
            in_flight.add(i)
            try:
                outcomes.append(await one_request(client, i, load, clock))
            finally:
                in_flight.discard(i)

    async def killer() -> None:
        await asyncio.sleep(kill_after_s)
        kill_info.update(at_s=round(time.monotonic() - clock, 3), in_flight=len(in_flight))
        kill()

    limits = httpx.Limits(max_connections=load.concurrency, max_keepalive_connections=load.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(client_loop(client) for _ in range(load.concurrency)))
        if not kill_task.done():  # the load ended before the kill: the report shows no kill
            kill_task.cancel()
    return outcomes, kill_info


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(outcomes: list[Outcome], kill_info: dict, replicas: dict[str, Process], killed: str,
              weights: dict[str, int]) -> dict:
    by_port = {f"127.0.0.1:{p.port}": name for name, p in replicas.items()}
    kill_at = kill_info.get("at_s", float("inf"))
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    elapsed = max((o.finished for o in outcomes), default=0.0)

    def served_by(o: Outcome) -> str:
        last = o.upstream.split(",")[-1].strip()
        return by_port.get(last, last or "none")

    def share(rows: list[Outcome]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in rows:
            counts[served_by(o)] = counts.get(served_by(o), 0) + 1
        return dict(sorted(counts.items()))

    before = [o for o in ok if o.finished < kill_at]
    after = [o for o in ok if o.started > kill_at]
    models: dict[str, int] = {}
    for o in ok:
        models[o.model] = models.get(o.model, 0) + 1
    latencies = [o.finished - o.started for o in ok]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "failed": len(failed),
        "killed_replica": killed,
        "killed_at_s": kill_info.get("at_s"),
        "in_flight_at_kill": kill_info.get("in_flight"),
        "retried_by_nginx": sum("," in o.upstream for o in outcomes),
        "ok_after_kill": len(after),
        # Non-zero only with --kill-signal TERM: a draining replica finishes requests that reached it
        # on an open keep-alive connection before it closed them.
        "served_by_killed_after_kill": sum(served_by(o) == killed for o in after),
        "replica_share_before_kill": share(before),
        "replica_share_after_kill": share(after),
        "weights": weights,
        "model_share": dict(sorted(models.items())),
        "throughput_rps": round(len(ok) / elapsed, 2) if elapsed else 0.0,
        "tokens_per_s": round(sum(o.tokens for o in ok) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {"p50": round(1000 * percentile(latencies, 0.50), 1),
                       "p95": round(1000 * percentile(latencies, 0.95), 1),
                       "max": round(1000 * max(latencies, default=float("nan")), 1)},
        "failures": [{"status": o.status, "error": o.error[:200], "at_s": round(o.started, 3)} for o in failed[:10]],
    }


def rehearse(model_dir: Path, workdir: Path, replicas: int = 2, canary_model: Path | None = None,
             stable_weight: int = 2, canary_weight: int = 1, load: Load | None = None,
             kill_after_s: float = 4.0, kill_signal: int = signal.SIGKILL) -> dict:
    load = load or Load()
    names = [(f"stable-{i + 1}", model_dir) for i in range(replicas)]
    if canary_model is not None:
        names.append(("canary", canary_model))
    weights = {name: canary_weight if name == "canary" else stable_weight for name, _ in names}
    t0 = time.monotonic()
    started = start_servers(names, workdir, extra_args=("--no-response-cache",))
    processes = {p.name: p for p in started}
    nginx = None
    try:
        startup_s = time.monotonic() - t0
        nginx = start_nginx([(processes[n].port, weights[n]) for n, _ in names], workdir / "nginx")
        killed = "stable-1"
        outcomes, kill_info = asyncio.run(drive(nginx.url, load, kill_after_s,
                                                lambda: processes[killed].popen.send_signal(kill_signal)))
        report = summarise(outcomes, kill_info, processes, killed, weights)
        report["replicas_ready_after_s"] = round(startup_s, 2)
        report["kill_signal"] = signal.Signals(kill_signal).name
        # The survivors drain on SIGTERM and exit 0, as they would when Kubernetes scales in.
        report["survivor_exit_codes"] = {n: p.stop(signal.SIGTERM) for n, p in processes.items() if n != killed}
    finally:
        for p in processes.values():
            p.stop(signal.SIGKILL)
        if nginx is not None:
            nginx.stop(signal.SIGQUIT)  # nginx's graceful stop
    report["ok_verdict"] = (report["in_flight_at_kill"] is not None
                            and report["failed"] <= report["in_flight_at_kill"]
                            and report["ok_after_kill"] > 0
                            and all(code == 0 for code in report["survivor_exit_codes"].values()))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model directory of the stable replicas")
    p.add_argument("--replicas", type=int, default=2, help="stable replicas (default 2); stable-1 is killed")
    p.add_argument("--canary-model", type=Path, help="add one canary replica serving this model directory")
    p.add_argument("--stable-weight", type=int, default=2, help="nginx weight of each stable replica")
    p.add_argument("--canary-weight", type=int, default=1, help="nginx weight of the canary replica")
    p.add_argument("--requests", type=int, default=4000, help="at most this many requests")
    p.add_argument("--duration", type=float, default=10.0, help="at most this many seconds of load")
    p.add_argument("--concurrency", type=int, default=8, help="clients sending one request at a time")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--kill-after", type=float, default=4.0, help="seconds into the load to kill stable-1")
    p.add_argument("--kill-signal", choices=["KILL", "TERM"], default="KILL",
                   help="KILL: a crash (in-flight requests lose their connection); TERM: a drain")
    p.add_argument("--workdir", type=Path, help="logs (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.replicas < 2:
        p.error("--replicas must be at least 2: one is killed")
    load = Load(args.requests, args.duration, args.concurrency, args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        try:
            report = rehearse(args.model, args.workdir or Path(tmp), args.replicas, args.canary_model,
                              args.stable_weight, args.canary_weight, load, args.kill_after,
                              getattr(signal, f"SIG{args.kill_signal}"))
        except StackError as e:
            print(json.dumps({"ok_verdict": False, "error": str(e)}, indent=2))
            return 1
    print(json.dumps(report, indent=2))
    return 0 if report["ok_verdict"] else 1


if __name__ == "__main__":
    sys.exit(main())
