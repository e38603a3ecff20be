"""The real scrape, on loopback: a `code-assistant serve` replica and a Prometheus loaded with the
repo's scrape config (deploy/prometheus/prometheus.yml, pointed at the replica) and rules.

It sends two rounds of completions and editor events, waits for Prometheus to scrape them, then asks
Prometheus' HTTP API for a recording rule and for that rule's own expression, checks that every
rule evaluates without error, stops the replica and waits for CodeAssistantNoReadyReplicas to go
pending. Prints a JSON report; exit status 0 when every check passed.

    python deploy/scripts/local_scrape.py --model models/default
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from local_stack import DEPLOY, StackError, http_json, prometheus_query, start_prometheus, start_server

RULE = "model:code_completion_requests:rate5m"
ALERT = "CodeAssistantNoReadyReplicas"


def rule_expression(record: str) -> str:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule.get("record") == record:
                return rule["expr"]
    raise StackError(f"rules.yml has no recording rule {record}")


def poll(what: str, fetch, accept, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if accept(last):
            return last
        time.sleep(0.5)
    raise StackError(f"timed out after {timeout:.0f} s waiting for {what}; last answer: {last}")


def drive(server_url: str, completions: int) -> dict:
    ids = []
    for i in range(completions):
        status, body = http_json(server_url + "/complete", {"code": f"def handler_{i}(request):\n    ",
                                                              "max_tokens": 8, "temperature": 0.8})
        if status != 200:
            raise StackError(f"/complete answered {status}: {body}")
        ids.append(body["id"])
    for i, completion_id in enumerate(ids):
        http_json(server_url + "/v1/events", {"id": completion_id, "event": "shown", "language": "python"})
        if i % 2 == 0:
            http_json(server_url + "/v1/events", {"id": completion_id, "event": "accepted", "language": "python"})
    return {"completions": len(ids), "shown": len(ids), "accepted": (len(ids) + 1) // 2}


def rehearse(model_dir: Path, workdir: Path, completions: int = 6, timeout: float = 60.0) -> dict:
    report: dict = {}
    server = start_server(model_dir, workdir)
    prometheus = None
    try:
        t0 = time.monotonic()
        prometheus = start_prometheus([f"127.0.0.1:{server.port}"], workdir / "prometheus")
        up = poll("a successful scrape", lambda: prometheus_query(prometheus.url, 'up{job="code-assistant"}'),
                  lambda r: r and r[0]["value"][1] == "1", timeout)
        report["first_scrape_s"] = round(time.monotonic() - t0, 2)
        report["up"] = up[0]["value"][1]
        # A labelled counter appears at its first increment, and rate() counts only increases
        # Prometheus saw between scrapes: send one round, let a scrape record it, send another.
        drive(server.url, completions)
        poll("the first round in a scrape", lambda: prometheus_query(prometheus.url, "completion_events_total"),
             lambda r: len(r) >= 2, timeout)
        report["sent"] = drive(server.url, completions)
        # rate() needs two scrapes that both include the requests sent above.
        recorded = poll(f"recording rule {RULE}", lambda: prometheus_query(prometheus.url, RULE),
                        lambda r: r and float(r[0]["value"][1]) > 0, timeout)
        expression = rule_expression(RULE)
        direct = prometheus_query(prometheus.url, expression)
        report["recorded"] = {r["metric"].get("model", ""): float(r["value"][1]) for r in recorded}
        report["expression"] = expression.strip()
        report["expression_result"] = {r["metric"].get("model", ""): float(r["value"][1]) for r in direct}
        accept_ratio = poll("accepted/shown ratio", lambda: prometheus_query(
            prometheus.url, "model:completion_events_accepted_per_shown:ratio_rate1h"), bool, timeout)
        report["accepted_per_shown"] = {r["metric"].get("model", ""): float(r["value"][1]) for r in accept_ratio}
        status, rules = http_json(prometheus.url + "/api/v1/rules")
        evaluated = [r for g in rules["data"]["groups"] for r in g["rules"]]
        report["rules_loaded"] = len(evaluated)
        report["rule_errors"] = {r["name"]: r.get("lastError") for r in evaluated if r.get("health") != "ok"}
        _, alerts = http_json(prometheus.url + "/api/v1/alerts")
        report["alerts_while_serving"] = sorted(a["labels"]["alertname"] for a in alerts["data"]["alerts"])

        report["server_exit_code"] = server.stop(signal.SIGTERM)
        t_stop = time.monotonic()
        pending = poll(f"{ALERT} after the replica stopped", lambda: http_json(prometheus.url + "/api/v1/alerts")[1],
                       lambda a: any(x["labels"]["alertname"] == ALERT for x in a["data"]["alerts"]), timeout)
        report["no_ready_alert_after_s"] = round(time.monotonic() - t_stop, 2)
        report["no_ready_alert_state"] = next(x["state"] for x in pending["data"]["alerts"]
                                              if x["labels"]["alertname"] == ALERT)
    finally:
        server.stop(signal.SIGKILL)
        if prometheus is not None:
            prometheus.stop()
    report["ok"] = (not report["rule_errors"] and report["alerts_while_serving"] == []
                    and set(report["recorded"]) == set(report["expression_result"])
                    and report["server_exit_code"] == 0)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model directory for the replica")
    p.add_argument("--workdir", type=Path, help="logs and Prometheus data (default: a temporary directory)")
    p.add_argument("--completions", type=int, default=6)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="local-scrape-") as tmp:
        try:
            report = rehearse(args.model, args.workdir or Path(tmp), args.completions, args.timeout)
        except StackError as e:
            print(json.dumps({"ok": False, "error": str(e)}, indent=2))
            return 1
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
