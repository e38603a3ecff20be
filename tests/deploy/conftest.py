"""A running `code-assistant serve` for the deploy tests (helpers live in deploy_harness.py)."""
from __future__ import annotations

import signal

import pytest

from deploy_harness import local_stack


@pytest.fixture(scope="module")
def running_server(tiny_model_dir, tmp_path_factory):
    """A real replica that has served a completion and recorded shown/accepted events, so every
    labelled metric has a sample in /metrics."""
    server = local_stack.start_server(tiny_model_dir, tmp_path_factory.mktemp("server"))
    try:
        status, body = local_stack.http_json(server.url + "/complete", {"code": "def add(a, b):\n    ",
                                                                        "max_tokens": 4})
        assert status == 200, body
        for event in ("shown", "accepted", "dismissed"):
            status, answer = local_stack.http_json(server.url + "/v1/events",
                                                   {"id": body["id"], "event": event, "language": "python"})
            assert status == 200, answer
        yield server
    finally:
        server.stop(signal.SIGTERM)
