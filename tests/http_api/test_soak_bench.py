"""`code-assistant bench soak` in miniature: a few clients for a few seconds write its JSON and PNG."""
from __future__ import annotations

import json

from benchmarks import soak


def test_bench_soak_reports_windows_errors_latency_and_memory(server, tmp_path):
    assert soak.main(["--url", server.url, "--pid", str(server.proc.pid), "--clients", "6", "--duration", "4",
                      "--window", "1", "--max-tokens", "4", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["requests"] > 6 and report["errors"] == 0, report["errors_by_kind"]
    assert report["latency_ms"]["p99"] >= report["latency_ms"]["p50"] > 0
    assert report["rss_mb_start"] > 50 and report["rss_mb_end"] > 50
    assert len(report["windows"]) >= 3 and set(report["by_kind"]) <= {"stream", "abandoned_stream", "complete",
                                                                       "event"}
    assert (tmp_path / "soak.png").stat().st_size > 10_000
