"""`code-assistant bench engine --quick` runs end to end and writes its JSON, PNG and table."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_bench_engine_quick(tiny_model_dir, tmp_path, capsys):
    from benchmarks.cli import main

    assert main(["engine", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--work", str(tmp_path / "work"),
                 "--quick", "--threads", "1", "--engines", "ours,transformers"]) == 0
    report = json.loads((tmp_path / "engine_bench.json").read_text())
    assert (tmp_path / "engine_bench.png").stat().st_size > 0
    model = report["models"][0]
    for engine in ("ours", "transformers"):
        assert model["batch1"][engine]["1"]["decode_tokens_per_s"] > 0
        assert model["streams"][engine]["tokens"] > 0
        assert model["rss_mb"][engine]["1"]["peak_rss_mb"] > 0
    # the same weights: every engine's greedy text starts with ours
    assert all(n >= 4 for n in model["greedy_prefix_agreeing_with_ours"]["1"].values())
    assert model["bandwidth_bound"]["tokens_per_s"] > 0
    assert "| batch 1, 1 thread: decode tok/s |" in capsys.readouterr().out


def test_an_engine_that_is_not_installed_is_skipped_with_the_reason(monkeypatch):
    from benchmarks import bench_engines

    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails as when not installed
    assert "not installed" in bench_engines.missing("llama.cpp")
    assert bench_engines.missing("ours") is None
