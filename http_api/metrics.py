"""Prometheus metrics. The names are a contract: deploy/'s dashboards and alert rules use exactly these.

Each app gets its own registry (tests build several apps in one process). Engine state (queue,
batch, KV cache, prefix cache, draft tokens) is read at scrape time, so the numbers are never stale.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine import Engine

# Label values clients choose are folded onto fixed sets, so no client can grow the number of
# series (each one costs Prometheus memory and every scrape time): anything else counts as OTHER.
OTHER = "other"
# VS Code's language identifiers (code.visualstudio.com/docs/languages/identifiers) and the common
# Neovim filetypes that differ from them.
KNOWN_LANGUAGES = frozenset("""
    abap bat bibtex clojure coffeescript c cpp csharp css cuda-cpp d dart diff dockerfile dockercompose
    erlang fsharp git-commit git-rebase go groovy handlebars haml haskell html ini java javascript
    javascriptreact json jsonc julia latex less lua makefile markdown objective-c objective-cpp ocaml
    pascal perl perl6 php plaintext powershell pug python r razor ruby rust scss sass shaderlab
    shellscript slim sql stylus svelte swift typescript typescriptreact tex vb vue vue-html xml xsl yaml
    sh bash zsh fish kotlin scala elixir zig nim toml proto terraform cmake nix solidity vim cs
    unknown""".split())


def language_label(language: str) -> str:
    language = language.lower()
    return language if language in KNOWN_LANGUAGES else OTHER


DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def engine_load(engine: Engine) -> dict[str, float]:
    """Queue depth, running batch, KV-cache use, prefix-cache, draft and overload counters from the
    engine's public stats."""
    stats = engine.stats
    return {
        "queue_depth": float(stats.get("queue_depth", engine.queue_depth())),
        "running": float(stats.get("running_batch_size", 0)),
        "kv_cache_usage": float(min(1.0, max(0.0, stats.get("kv_cache_usage_ratio", 0.0)))),
        "prefix_hits": float(stats.get("prefix_cache_hits", 0)),
        "prefix_lookups": float(stats.get("prefix_cache_lookups", 0)),
        "draft_proposed": float(stats.get("draft_tokens_proposed", 0)),
        "draft_accepted": float(stats.get("draft_tokens_accepted", 0)),
        "draft_accepted_by_position": [float(n) for n in stats.get("draft_accepted_by_position", [])],
        "shed": float(stats.get("requests_shed", 0)),
        "superseded": float(stats.get("requests_superseded", 0)),
    }


class EngineCollector(Collector):
    def __init__(self, get_engine: Callable[[], Engine | None]):
        self.get_engine = get_engine

    def collect(self):
        engine = self.get_engine()
        load = engine_load(engine) if engine is not None else {
            "queue_depth": 0.0, "running": 0.0, "kv_cache_usage": 0.0, "prefix_hits": 0.0, "prefix_lookups": 0.0,
            "draft_proposed": 0.0, "draft_accepted": 0.0, "draft_accepted_by_position": [], "shed": 0.0,
            "superseded": 0.0}
        yield GaugeMetricFamily("engine_queue_depth", "Requests waiting for a batch slot.", value=load["queue_depth"])
        yield GaugeMetricFamily("engine_running_batch_size", "Sequences decoded together in the current step.",
                                value=load["running"])
        yield GaugeMetricFamily("engine_kv_cache_usage_ratio", "Share of the KV cache in use (0..1).",
                                value=load["kv_cache_usage"])
        yield CounterMetricFamily("engine_prefix_cache_hits", "Requests that reused a cached prompt prefix.",
                                  value=load["prefix_hits"])
        yield CounterMetricFamily("engine_prefix_cache_lookups", "Requests that looked for a cached prompt prefix.",
                                  value=load["prefix_lookups"])
        yield CounterMetricFamily("engine_draft_tokens_proposed",
                                  "Draft tokens from the context checked by speculative decoding.",
                                  value=load["draft_proposed"])
        yield CounterMetricFamily("engine_draft_tokens_accepted", "Draft tokens the model agreed with.",
                                  value=load["draft_accepted"])
        by_position = CounterMetricFamily("engine_draft_tokens_accepted_per_position",
                                          "Accepted draft tokens by their index in the draft (0 = first).",
                                          labels=["position"])
        for position, n in enumerate(load["draft_accepted_by_position"]):
            by_position.add_metric([str(position)], n)
        yield by_position
        yield CounterMetricFamily("engine_requests_shed",
                                  "Requests refused busy (429): queue full, or no batch slot within the queue wait.",
                                  value=load["shed"])
        yield CounterMetricFamily("engine_requests_superseded",
                                  "Requests dropped for a newer request of the same user (409 superseded).",
                                  value=load["superseded"])


class Metrics:
    def __init__(self, get_engine: Callable[[], Engine | None]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("code_completion_requests", "Completion requests by HTTP status.",
                                ["status", "model"], registry=r)
        self.duration = Histogram("code_completion_duration_seconds", "Completion request latency.",
                                  ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("code_completion_time_to_first_token_seconds", "Time to the first generated token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("tokens_generated", "Tokens generated by the engine.", ["model"], registry=r)
        self.active = Gauge("active_requests", "Completion requests in flight.", registry=r)
        self.events = Counter("completion_events", "Editor feedback on completions.",
                              ["event", "language", "model"], registry=r)
        self.model_info = Gauge("code_assistant_model_info", "The model served (always 1).",
                                ["model", "version"], registry=r)
        r.register(EngineCollector(get_engine))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
