"""The scale-out rehearsal (deploy/scripts/rehearse_scale_out.py): two stable replicas and a
canary behind nginx, one stable replica killed mid-run."""
from __future__ import annotations

import json
import shutil

import pytest

from deploy_harness import require_tool, run_script


@pytest.fixture
def canary_model_dir(tiny_model_dir, tmp_path):
    """The next model version: its own directory name (the `model` label) and version."""
    canary = tmp_path / "canary-model"
    shutil.copytree(tiny_model_dir, canary)
    config = json.loads((canary / "config.json").read_text())
    (canary / "config.json").write_text(json.dumps({**config, "version": "canary-2"}, indent=2))
    return canary


@pytest.mark.slow
def test_killing_a_replica_fails_no_request_beyond_those_in_flight(tiny_model_dir, canary_model_dir, tmp_path):
    require_tool("nginx", "Debian package nginx; scripts/install-system-deps.sh")
    report = run_script("rehearse_scale_out.py", "--model", str(tiny_model_dir), "--canary-model",
                        str(canary_model_dir), "--duration", "8", "--kill-after", "3", "--concurrency", "6",
                        "--workdir", str(tmp_path / "run"))
    print(json.dumps(report, indent=2))  # the figures, in the test log
    assert report.get("error") is None, report.get("error")
    assert report["killed_at_s"] is not None, "the load ended before the kill"
    assert report["failed"] <= report["in_flight_at_kill"], report["failures"]
    assert report["ok_after_kill"] > 0
    assert report["survivor_exit_codes"] == {"stable-2": 0, "canary": 0}
    assert report["exit_code"] == 0

    # nginx weights 2:2:1 -> the canary gets a fifth of the traffic, a third once one stable replica is gone.
    before, after = report["replica_share_before_kill"], report["replica_share_after_kill"]
    assert before["canary"] / sum(before.values()) == pytest.approx(0.2, abs=0.05)
    assert after["canary"] / sum(after.values()) == pytest.approx(1 / 3, abs=0.05)
    assert set(report["model_share"]) == {tiny_model_dir.name, "canary-model"}
