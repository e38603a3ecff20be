"""Every metric the dashboard, the rules and the autoscaler's adapter read is one a running
`code-assistant serve` exports, and the dashboard shows every metric it exports."""
from __future__ import annotations

import json

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy_harness import DEPLOY, local_stack
from promql_names import metric_names

# The metric contract between http_api and deploy/ (the dashboard and rules were built on these).
CONTRACT = {"code_completion_requests", "code_completion_duration_seconds", "code_completion_time_to_first_token_seconds",
            "tokens_generated", "active_requests", "engine_queue_depth", "engine_running_batch_size",
            "engine_kv_cache_usage_ratio", "engine_prefix_cache_hits", "engine_prefix_cache_lookups",
            "completion_events", "code_assistant_model_info"}
# Series Prometheus makes itself for every target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def rules() -> list[dict]:
    return [r for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"] for r in g["rules"]]


def adapter_queries() -> list[str]:
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-values.yaml").read_text())
    return [rule["seriesQuery"] for rule in adapter["rules"]["custom"]]


@pytest.mark.parametrize("expr, names", [
    ('histogram_quantile(0.95, sum by (model, le) (rate(a_bucket{job="x",model=~"$model"}[$__rate_interval])))',
     {"a_bucket"}),
    ('sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(b_total[5m])) > 0.05', {"a_total", "b_total"}),
    ('absent(up{job="x",ready!="false"} == 1)', {"up"}),
    ('label_values(info_metric{job="x"}, model)', {"info_metric"}),
    ("x offset 5m + on(instance) group_left(version) y * 1e3", {"x", "y"}),
    ('sum by (le) (rate(c[1h])) / ignoring(le) d', {"c", "d"}),
])
def test_metric_names_are_found_in_promql(expr, names):
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def exported(running_server) -> tuple[set[str], set[str]]:
    """(sample names, metric family names) in the running server's /metrics."""
    status, body = local_stack.http_get(running_server.url + "/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    names = {f.name for f in families}
    # prometheus_client adds `<name>_created` (a start timestamp) beside each counter and histogram.
    metrics = {n for n in names if not (n.endswith("_created") and n.removesuffix("_created") in names)}
    return {s.name for f in families for s in f.samples}, metrics


def test_dashboard_rules_and_adapter_read_only_exported_metrics(exported):
    samples, _ = exported
    recorded = {r["record"] for r in rules() if "record" in r}
    sources = {"dashboard": dashboard_expressions(), "rules": [r["expr"] for r in rules()],
               "prometheus-adapter": adapter_queries()}
    for source, exprs in sources.items():
        read = set().union(*(metric_names(e) for e in exprs))
        assert read, f"no metric names found in the {source}"
        unknown = read - samples - recorded - PROMETHEUS_SYNTHETIC
        assert not unknown, f"the {source} reads metrics the server does not export: {sorted(unknown)}"


def test_server_exports_the_contract_metrics(exported):
    _, families = exported
    assert CONTRACT <= families, f"missing: {sorted(CONTRACT - families)}"


def test_dashboard_shows_every_exported_metric(exported):
    _, families = exported
    read = set().union(*(metric_names(e) for e in dashboard_expressions()))
    for family in families:
        assert any(name == family or name.startswith(family + "_") for name in read), \
            f"the dashboard does not show {family}"


def test_dashboard_compares_models_for_canary_decisions():
    exprs = dashboard_expressions()
    assert any("completion_events_total" in e and 'event="accepted"' in e and "by (model)" in e for e in exprs)
    assert any("code_completion_duration_seconds_bucket" in e and "by (model, le)" in e for e in exprs)
    assert any("code_completion_requests_total" in e and "by (model)" in e for e in exprs)
    quantiles = {e.split("(", 1)[1].split(",", 1)[0] for e in exprs
                 if e.startswith("histogram_quantile") and "code_completion_duration_seconds" in e}
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_dashboard_is_importable():
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all({"h", "w", "x", "y"} <= set(p["gridPos"]) for p in board["panels"])
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "model"}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
