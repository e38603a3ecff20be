"""A real Prometheus with the repo's scrape config and rules scrapes a real replica on loopback
(deploy/scripts/local_scrape.py)."""
from __future__ import annotations

import yaml

from deploy_harness import DEPLOY, require_tool, run_script


def test_prometheus_scrapes_the_server_and_evaluates_the_rules(tiny_model_dir, tmp_path):
    require_tool("prometheus", "Debian package prometheus; scripts/install-system-deps.sh")
    report = run_script("local_scrape.py", "--model", str(tiny_model_dir), "--workdir", str(tmp_path),
                        "--timeout", "60")
    assert report.get("error") is None, report.get("error")
    assert report["exit_code"] == 0, report
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"] for r in g["rules"]]
    assert report["rules_loaded"] == len(rules)
    assert report["rule_errors"] == {}
    model = tiny_model_dir.name
    # The recording rule, as Prometheus evaluated it, and its expression queried directly.
    assert report["recorded"][model] > 0
    assert report["expression_result"][model] > 0
    assert report["accepted_per_shown"][model] == 0.5
    assert report["alerts_while_serving"] == []
    assert report["server_exit_code"] == 0
    assert report["no_ready_alert_state"] in ("pending", "firing")
