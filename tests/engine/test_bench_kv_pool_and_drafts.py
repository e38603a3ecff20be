"""The KV-pool and speculative-decoding benchmarks run end to end on the tiny model and write
their JSON and PNG (the figures in docs/engine.md come from the same code on larger models)."""
from __future__ import annotations

import json


def test_kv_pool_bench_runs(tiny_model_dir, tmp_path):
    from benchmarks.kv_pool_bench import main

    assert main(["--model", str(tiny_model_dir), "--out", str(tmp_path), "--context", "100", "--streams", "3",
                 "--new-tokens", "4", "--repeats", "2", "--pool-mb", "8"]) == 0
    report = json.loads((tmp_path / "kv_pool_bench.json").read_text())
    assert (tmp_path / "kv_pool_bench.png").stat().st_size > 0
    assert report["keystroke_ttft"]["reuse"]["reused_share_p50"] > 0.5
    assert report["keystroke_ttft"]["no_reuse"]["reused_share_p50"] == 0
    assert report["pool_for_32k_context"]["int8"]["tokens_held"] > report["pool_for_32k_context"]["fp32"]["tokens_held"]
    assert report["aggregate_tokens_per_s"]["int8 kv, drafts"]["3"]["first_run"]["cpu"] > 0


def test_speculative_bench_runs_and_keeps_greedy_text(tiny_model_dir, tmp_path):
    from benchmarks.speculative_bench import main

    assert main(["--model", str(tiny_model_dir), "--out", str(tmp_path), "--per-file", "1", "--max-tokens", "12",
                 "--quantize", "none"]) == 0  # fp32: it fails if a draft changed a greedy completion
    report = json.loads((tmp_path / "speculative_bench.json").read_text())
    assert (tmp_path / "speculative_bench.png").stat().st_size > 0
    assert report["draft_tokens_proposed"] >= report["draft_tokens_accepted"] > 0
