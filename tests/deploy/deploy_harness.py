"""What the deploy tests share: paths, the local-stack helpers from deploy/scripts, system tools
(a missing one skips the test, or fails it when CI=true) and running the rehearsal scripts."""
from __future__ import annotations

import json
import os
import subprocess
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


def run_script(script: str, *args: str, timeout: float = 180.0) -> dict:
    """Run a deploy/scripts rehearsal as a user would and return its JSON report."""
    proc = subprocess.run([sys.executable, str(DEPLOY / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{script} printed no JSON report (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
    report["exit_code"] = proc.returncode
    return report
