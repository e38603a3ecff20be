"""SIGTERM drains in-flight work and exits 0; /metrics passes promtool; logs keep code private."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import httpx
import pytest

CONTRACT_METRICS = [
    "code_completion_requests_total", "code_completion_duration_seconds_bucket",
    "code_completion_time_to_first_token_seconds_bucket", "tokens_generated_total", "active_requests",
    "engine_queue_depth", "engine_running_batch_size", "engine_kv_cache_usage_ratio",
    "engine_prefix_cache_hits_total", "engine_prefix_cache_lookups_total", "completion_events_total",
    "code_assistant_model_info",
]


def test_sigterm_finishes_in_flight_request_and_exits_zero(long_model_dir, start_server):
    proc = start_server(long_model_dir, "--drain-timeout", "20", "--no-stop-loops")  # runs to max_tokens
    result = {}

    def slow_request() -> None:
        # Greedy: runs to the full 2000 tokens (over a second), long enough to be caught by SIGTERM.
        r = httpx.post(proc.url + "/complete", json={"code": "def ", "max_tokens": 2000, "temperature": 0},
                       timeout=30)
        result["status"], result["body"], result["at"] = r.status_code, r.json(), time.monotonic()

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 10
    while proc.metric("engine_running_batch_size") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.proc.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    worker.join(timeout=30)
    assert proc.proc.wait(timeout=30) == 0, proc.log()
    assert result["status"] == 200
    assert result["at"] > signalled_at  # answered after the signal: drained, not cut off
    assert result["body"]["finish_reason"] in ("length", "stop") and result["body"]["tokens"] > 0
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(proc.url + "/health", timeout=2)


def test_metrics_pass_promtool_and_carry_the_contract_names(server):
    httpx.post(server.url + "/complete", json={"code": "x", "max_tokens": 2}, timeout=30)  # a labelled series
    httpx.post(server.url + "/v1/events", json={"id": "cmpl-x", "event": "accepted", "language": "python"})
    text = httpx.get(server.url + "/metrics").text
    for name in CONTRACT_METRICS:
        assert any(line.startswith(name) for line in text.splitlines()), name
    assert 'completion_events_total{event="accepted",language="python"' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_events_are_counted_per_language_and_model(server):
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    before = server.metric("completion_events_total", event="shown", language="rust", model=model)
    for _ in range(3):
        r = httpx.post(server.url + "/v1/events", json={"id": "cmpl-abc", "event": "shown", "language": "rust"})
        assert r.status_code == 200
    after = server.metric("completion_events_total", event="shown", language="rust", model=model)
    assert after - before == 3


def test_partial_accepts_are_an_event_of_their_own(server):
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    before = server.metric("completion_events_total", event="partially_accepted", language="go", model=model)
    r = httpx.post(server.url + "/v1/events", json={"id": "cmpl-p", "event": "partially_accepted", "language": "go"})
    assert r.status_code == 200 and r.json()["event"] == "partially_accepted"
    assert server.metric("completion_events_total", event="partially_accepted", language="go", model=model) == before + 1


def test_request_log_is_json_without_the_code(server):
    secret = "def very_private_function_4711():"
    r = httpx.post(server.url + "/complete", json={"code": secret, "max_tokens": 3},
                   headers={"x-request-id": "req-private-1"})
    assert r.status_code == 200
    completion = r.json()["completion"]
    deadline = time.monotonic() + 5
    line = None
    while line is None and time.monotonic() < deadline:
        line = next((json.loads(s) for s in server.log().splitlines() if "req-private-1" in s), None)
        time.sleep(0.05)
    assert line is not None
    assert line["status"] == 200 and line["path"] == "/complete" and line["latency_ms"] > 0
    assert line["prompt_chars"] == len(secret) and line["completion_tokens"] == r.json()["tokens"]
    assert "very_private_function_4711" not in server.log()
    assert "prompt" not in line and "completion" not in line
    del completion
