"""`code-assistant bench http` against a running server: a short run writes its JSON and PNG."""
from __future__ import annotations

import json

from benchmarks import http_bench


def test_bench_http_reports_every_level(server, tmp_path):
    assert http_bench.main(["--url", server.url, "--concurrency", "1,4", "--duration", "0.5", "--max-tokens", "4",
                            "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "http_bench.json").read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["requests"] > 0 and level["errors"] == 0
        assert level["latency_ms"]["p50"] > 0 and level["ttft_ms"]["p99"] >= level["ttft_ms"]["p50"]
        assert level["cost_per_1k_tokens_usd"] > 0
    assert report["assumptions"]["instance"] == "aws-c7i.large"
    assert (tmp_path / "http_bench.png").stat().st_size > 10_000
