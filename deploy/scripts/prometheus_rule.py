"""Prints deploy/prometheus/rules.yml as a PrometheusRule for the Prometheus Operator, which
loads rules from these objects rather than from files. deploy/k8s/base/prometheusrule.yaml is
this script's output (a test keeps them equal):

    python deploy/scripts/prometheus_rule.py > deploy/k8s/base/prometheusrule.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules.yml"
HEADER = ("# Generated from deploy/prometheus/rules.yml by deploy/scripts/prometheus_rule.py; edit the rules\n"
          "# there and regenerate. The `release` label is what kube-prometheus-stack's ruleSelector matches.\n")


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "code-assistant",
                     "labels": {"app.kubernetes.io/name": "code-assistant", "release": "kube-prometheus-stack"}},
        "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]},
    }


class BlockStrings(yaml.SafeDumper):
    """Multi-line expressions stay readable as `|` blocks."""


BlockStrings.add_representer(str, lambda dumper, s: dumper.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render() -> str:
    return HEADER + yaml.dump(prometheus_rule(), Dumper=BlockStrings, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
