"""The scrape config and rules pass promtool, and the alerts' unit tests pass."""
from __future__ import annotations

import subprocess

import yaml

from deploy_harness import DEPLOY, require_tool

PROMETHEUS = DEPLOY / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = require_tool("promtool", "Debian package prometheus; scripts/install-system-deps.sh")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def test_scrape_config_is_valid():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid():
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not():
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert {"CodeAssistantHighErrorRate", "CodeAssistantLatencyP95High", "CodeAssistantQueueSaturated",
            "CodeAssistantNoReadyReplicas"} <= alerts
    cases = [c for t in yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for alert in alerts:
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), f"no test fires {alert}"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), f"no test keeps {alert} quiet"
