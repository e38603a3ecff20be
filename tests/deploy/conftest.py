"""What the deploy tests share: paths, the local-stack helpers from deploy/scripts, system tools
(missing ones skip the test, or fail it when CI=true) and a running `code-assistant serve`."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY / "scripts"))

import local_stack  # noqa: E402  (deploy/scripts is not a package)


def require_tool(name: str, how: str) -> str:
    """The path of a system tool; without it the test skips, or fails in CI where it must exist."""
    found = local_stack.find_tool(name)
    if found is None and Path(sys.executable).with_name(name).exists():
        found = str(Path(sys.executable).with_name(name))
    if found:
        return found
    message = f"{name} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


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


def run_script(script: str, *args: str, timeout: float = 180.0) -> dict:
    """Run a deploy/scripts rehearsal as a user would and return its JSON report."""
    import subprocess

    proc = subprocess.run([sys.executable, str(DEPLOY / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{script} printed no JSON report (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
    report["exit_code"] = proc.returncode
    return report
