"""The metric names a PromQL expression reads, found without a PromQL parser: label matchers,
strings, ranges and grouping clauses are removed first, then every identifier that is not a
function call or a keyword is a metric name. Enough for the expressions in deploy/ (checked on
known expressions in test_metric_names.py)."""
from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
GRAFANA_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([^,]+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    grafana = GRAFANA_LABEL_VALUES.match(expr)
    if grafana:  # a dashboard variable's query: only its first argument is PromQL
        expr = grafana.group(1)
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # the exponent or unit of a number: 1e3, 5m
            continue
        if text[match.end():].lstrip().startswith("("):  # a function or an aggregation
            continue
        if match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names
