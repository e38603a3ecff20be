"""`code-assistant bench engine --quick` runs end to end and writes its JSON and PNG."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_bench_engine_quick(tiny_model_dir, tmp_path):
    from benchmarks.cli import main

    assert main(["engine", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "engine_bench.json").read_text())
    assert (tmp_path / "engine_bench.png").stat().st_size > 0
    assert report["baseline"]["max_abs_logit_diff_vs_ours"] < 1e-3  # the baseline really runs our weights
    assert report["kv_cache"]["int8"]["bytes_per_token"] < report["kv_cache"]["fp32"]["bytes_per_token"]
    assert report["time_to_first_token"]["fp32"]["reused_fraction"] > 0.5
    for name in ("fp32", "int8", "hf_baseline"):
        assert report["batch1"][name]["tokens_per_s"] > 0
