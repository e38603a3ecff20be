"""`code-assistant bench capacity` in miniature: the open-loop schedule, sending on time whatever the
server does, and the JSON and PNG of a real sweep (what it measures, not how fast)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import capacity_bench
from benchmarks.capacity_bench import Ours, editor_files, run_point, schedule


def test_schedule_offers_the_rate_and_users_type_forward_through_their_own_files():
    texts = editor_files(20, 1200)
    assert len({t[:200] for t in texts}) == 20    # a different file per user
    requests = schedule(texts, rate=10.0, duration_s=30.0, before=400, after=100, seed=3)
    assert 0.8 * 300 < len(requests) < 1.2 * 300
    assert [r.at for r in requests] == sorted(r.at for r in requests)
    assert all(len(r.prefix) == 400 and len(r.suffix) == 100 for r in requests)
    shared = 0
    for user in range(20):
        mine = [r for r in requests if r.user == user]
        for earlier, later in zip(mine, mine[1:]):
            # the text before the earlier cursor is still before the later one, as keystrokes make it
            shared += earlier.prefix[-200:] in later.prefix
            assert texts[user].find(later.prefix + later.suffix) >= 0
    assert shared > 0.8 * (len(requests) - 20)


def test_jittered_pauses_stay_within_half_the_mean_gap():
    texts = editor_files(4, 1200)
    requests = schedule(texts, rate=4.0, duration_s=60.0, before=400, after=100, gaps="jittered")
    for user in range(4):
        times = [r.at for r in requests if r.user == user]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert gaps and all(0.5 - 1e-9 <= g <= 1.5 + 1e-9 for g in gaps)   # mean gap: 4 users / 4 per s


class SlowBusyServer(BaseHTTPRequestHandler):
    """Answers every request with 429 after a second: a server that is no help at all."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(1.0)
        self.send_response(429)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_requests_leave_on_schedule_whatever_the_server_does():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowBusyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        requests = schedule(editor_files(10, 1200), rate=20.0, duration_s=1.0, before=400, after=100)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        samples, elapsed = asyncio.run(run_point(Ours(url, 4), requests, timeout=10))
    finally:
        server.shutdown()
    assert len(samples) == len(requests) > 10
    # every request left on time although none had been answered when the last one left
    assert max(s.late_s for s in samples) < 0.2, sorted(s.late_s for s in samples)[-3:]
    assert {s.error for s in samples} == {"429"}
    assert elapsed >= 1.0 + max(r.at for r in requests) - 0.05


def test_bench_capacity_writes_a_sweep_as_json_and_png(tiny_model_dir, tmp_path):
    assert capacity_bench.main(["--model", str(tiny_model_dir), "--users", "6", "--rates", "3,6", "--duration", "2",
                                "--before", "400", "--after", "100", "--tokens", "4", "--no-llama-server",
                                "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert [(p["server"], p["offered_rate"]) for p in report["points"]] == [("code-assistant", 3.0),
                                                                            ("code-assistant", 6.0)]
    for point in report["points"]:
        assert point["scheduled"] > 0 and point["answered"] + point["errors"] == point["scheduled"]
        assert point["errors"] == 0, point["errors_by_kind"]
        assert point["last_token_ms"]["p99"] >= point["last_token_ms"]["p95"] >= point["last_token_ms"]["p50"] > 0
        assert point["first_chunk_ms"]["p50"] <= point["last_token_ms"]["p50"]
        assert 0 < point["mean_tokens"] <= 4
    assert set(report["goal"]["held_rate"]) == {"code-assistant", "llama-server"}
    assert (tmp_path / "capacity.png").stat().st_size > 10_000


LLAMA_SERVER = Path(capacity_bench.LLAMA_CPP_HOME) / "bin" / "llama-server"


@pytest.mark.skipif(not LLAMA_SERVER.is_file(), reason=f"no {LLAMA_SERVER}: run scripts/build-llama-cpp.sh")
def test_bench_capacity_runs_llama_server_beside_ours_on_the_same_weights(tiny_model_dir, tmp_path):
    assert capacity_bench.main(["--model", str(tiny_model_dir), "--users", "4", "--rates", "4", "--duration", "2",
                                "--before", "400", "--after", "100", "--tokens", "4", "--slots", "4",
                                "--work", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "capacity.json").read_text())
    by_server = {p["server"]: p for p in report["points"]}
    assert set(by_server) == {"code-assistant", "llama-server"}
    assert by_server["llama-server"]["scheduled"] == by_server["code-assistant"]["scheduled"]
    assert by_server["llama-server"]["errors"] == 0, by_server["llama-server"]["errors_by_kind"]


@pytest.mark.parametrize("args", [["--rates", "9,x"], ["--rates", "0"], ["--users", "0"]])
def test_bad_flags_are_one_line_and_exit_2(args):
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", "capacity", *args, "--no-llama-server"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "capacity" in done.stderr
