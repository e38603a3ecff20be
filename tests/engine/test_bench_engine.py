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


def test_an_engine_that_is_not_installed_is_skipped_with_the_reason(monkeypatch, tmp_path):
    from benchmarks import bench_engines, bench_models

    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails as when not installed
    monkeypatch.setattr(bench_models, "LLAMA_CPP_HOME", tmp_path)  # and no llama-server built
    for engine in ("llama.cpp", "llama.cpp-q4_k_m"):
        assert "not installed" in bench_engines.missing(engine)
    assert bench_engines.missing("ours") is None
    assert bench_engines.missing("ours-int4") is None


def test_bench_engine_quick_int4_beside_llama_cpp_q4_k_m(tiny_model_dir, tmp_path):
    """The 4-bit pair: ours-int4 and llama.cpp Q4_K_M (llama-quantize's file of the same weights, run
    by llama-server when llama-cpp-python is not installed), each with its own bandwidth bound."""
    from benchmarks import bench_engines
    from benchmarks.cli import main

    reason = bench_engines.missing("llama.cpp-q4_k_m")
    if reason:
        pytest.skip(reason)
    assert main(["engine", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--work", str(tmp_path / "work"),
                 "--quick", "--threads", "1", "--engines", "ours-int4,llama.cpp-q4_k_m"]) == 0
    model = json.loads((tmp_path / "engine_bench.json").read_text())["models"][0]
    assert model["skipped"] == {}
    for engine in ("ours-int4", "llama.cpp-q4_k_m"):
        assert model["batch1"][engine]["1"]["decode_tokens_per_s"] > 0
        assert model["batch1"][engine]["1"]["share_of_bandwidth_bound"] > 0
        assert model["rss_mb"][engine]["1"]["peak_rss_mb"] > 0
    assert all(model["bandwidth_bounds"][e]["tokens_per_s"] > 0 for e in ("ours-int4", "llama.cpp-q4_k_m"))
    assert model["decode_ratios"]["ours-int4 / llama.cpp-q4_k_m"]["1"]["median"] > 0
