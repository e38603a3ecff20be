"""scripts/train-default-on-gpu.sh end to end on the CPU (`--smoke`), as a subprocess of the real
script: data, warm-up, training, the bf16 and int8 exports packed in tar volumes, the held-out
evaluation and the summary, so that the GPU recipe never rots where no GPU is at hand."""
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from engine import Engine, SamplingParams
from engine.model_dir import load_model_dir

from ..conftest import STDLIB
from .test_cli import REPO

SCRIPT = REPO / "scripts" / "train-default-on-gpu.sh"
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 << 20, 64 << 20  # what a borrowed GPU machine hands back
# Installed here for the server and the language server, absent on the GPU machines: the recipe must not need them.
NOT_ON_THE_GPU_MACHINE = {"fastapi", "starlette", "uvicorn", "pydantic_settings", "pygls", "lsprotocol"}


def run_script(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("recipe-out"), tmp_path_factory.mktemp("recipe-work")
    proc = run_script(out, "--smoke", "--src", STDLIB / "json", "--src", STDLIB / "email", "--work", work)
    if proc.returncode != 0:
        raise AssertionError(f"the recipe exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unpacked(smoke, tmp_path_factory):
    out, summary = smoke
    where = tmp_path_factory.mktemp("unpacked")
    for name in summary["export"]["volumes"]:
        with tarfile.open(out / name) as tar:
            tar.extractall(where, filter="data")
    return where


@pytest.mark.slow
def test_the_summary_reports_every_phase(smoke):
    out, summary = smoke
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["data"]["train"]["tokens"] > 0 and summary["data"]["val"]["files"] > 0
    assert summary["data"]["excluded"] == ["cachetools", "tinydb", "toolz"]  # the held-out projects
    warmup, train = summary["warmup"], summary["train"]
    assert [c["batch_size"] for c in warmup["candidates"]] == [4, 8]
    assert warmup["batch_size"] in (4, 8) and warmup["compile"] is False
    # Six steps (gpu-smoke.yaml's max_steps) unless the measured throughput plans fewer for the time left.
    assert 1 <= train["steps"] == warmup["planned_steps"] <= 6
    assert train["tokens_seen"] == train["steps"] * warmup["batch_size"] * summary["model"]["block_size"]
    assert train["tokens_per_second"] > 0 and train["flops_per_token"] > 6 * summary["model"]["params"] / 2
    assert train["mfu"] is None  # no peak to divide by on the CPU
    assert summary["model"]["arch"] == "llama" and summary["model"]["params"] > 0
    assert set(summary["wall_seconds"]) == {"data", "warmup", "train", "export", "eval", "total"}
    ev = summary["eval"]
    assert math.isfinite(ev["heldout_bits_per_byte"]) and ev["heldout_bits_per_byte"] > 0
    for variant in ("file_only", "workspace"):
        result = ev["line_completion"][variant]
        assert result["lines"] > 0 and 0 <= result["exact_match"] <= 1 and 0 <= result["edit_similarity"] <= 1
    assert ev["fibonacci"]["prompt"] == "def fibonacci(n):\n    if n <= 1:\n        return n\n    "
    assert isinstance(ev["fibonacci"]["completion"], str)
    assert not NOT_ON_THE_GPU_MACHINE & set(summary["imported_packages"])
    assert {"torch", "lightning", "tiktoken", "safetensors"} <= set(summary["imported_packages"])


@pytest.mark.slow
def test_the_output_folder_fits_what_the_gpu_machine_hands_back(smoke):
    out, summary = smoke
    files = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert set(files) == {"summary.json", "train.log", "loss_curve.png", *summary["export"]["volumes"]}
    assert len(files) <= MAX_FILES
    assert max(files.values()) <= MAX_FILE_BYTES and sum(files.values()) <= MAX_TOTAL_BYTES
    log = (out / "train.log").read_text()
    assert "tokens/s" in log and "== eval done" in log


@pytest.mark.slow
def test_the_exports_load_in_the_engine_and_in_transformers(unpacked, smoke):
    model, int8 = unpacked / "model", unpacked / "model-int8"
    for folder in (model, int8):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) <= {p.name for p in folder.glob("model-*.safetensors")}
    assert json.loads((model / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert json.loads((int8 / "config.json").read_text())["code_assistant"]["quantization"]

    for folder, quantize in ((model, None), (int8, "int8")):
        engine = Engine.load(folder, quantize=quantize)
        try:
            done = engine.complete("def add(a, b):\n    ", params=SamplingParams(max_tokens=4, temperature=0.0))
        finally:
            engine.close()
        assert done.finish_reason in ("stop", "length")

    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is not installed")
    ours, tokenizer, _ = load_model_dir(model)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tokenizer.encode((STDLIB / "json" / "decoder.py").read_text())[:ours.config.block_size]])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() <= 1e-4
    assert smoke[1]["transformers"]["max_abs_logit_diff"] <= 1e-4  # the recipe's own check agrees


def test_no_output_folder_is_a_usage_line_and_exit_2():
    proc = run_script(timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


@pytest.mark.slow
def test_a_model_larger_than_a_file_goes_into_shards_and_volumes(smoke, tmp_path):
    """The GPU run's sizes at the smoke's scale: many shards, several volumes, each within its limit."""
    from training.gpu_recipe import check_outputs, pack_volumes, reshard

    trained = smoke[1]["export"]["work"]
    sharded = reshard(Path(trained), tmp_path / "model", max_shard_bytes=64 << 10, dtype=torch.bfloat16)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2 and all(p.stat().st_size <= (64 << 10) + 8192 for p in shards)
    ours, tokenizer, _ = load_model_dir(trained)
    theirs, _, _ = load_model_dir(sharded)
    ids = torch.tensor([tokenizer.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids)).abs().max().item() < 0.1  # bf16 rounding of every weight

    out = tmp_path / "out"
    out.mkdir()
    volumes = pack_volumes({"model": sharded}, out, volume_bytes=160 << 10)
    assert len(volumes) > 1 and all(v.stat().st_size <= 160 << 10 for v in volumes)
    unpacked = tmp_path / "unpacked"
    for volume in volumes:
        with tarfile.open(volume) as tar:
            tar.extractall(unpacked, filter="data")
    assert {p.name: p.read_bytes() for p in (unpacked / "model").iterdir()} == \
        {p.name: p.read_bytes() for p in sharded.iterdir()}
    assert set(check_outputs(out)) == {v.name for v in volumes}
    for i in range(9 - len(volumes)):
        (out / f"extra-{i}.txt").write_text("x")
    with pytest.raises(ValueError, match="more than 8"):
        check_outputs(out)


@pytest.mark.slow
def test_the_gpu_configs_model_fits_what_the_machine_hands_back(smoke, tmp_path):
    """gpu-default.yaml's model (untrained, an 8 K vocabulary), exported as the GPU run exports
    it: its volumes, the summary, the log and the loss curve stay within 8 files and 64 MiB."""
    import dataclasses

    from engine.model import Transformer
    from engine.model_dir import save_model_dir
    from training.config import load_config
    from training.gpu_recipe import CONFIGS, check_outputs, export

    trained = Path(smoke[1]["export"]["work"])
    config = dataclasses.replace(load_config(CONFIGS / "gpu-default.yaml").model, vocab_size=8192)
    tokenizer_files = {name: (trained / name).read_text() for name in
                       ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}
    full = save_model_dir(tmp_path / "full", Transformer(config), tokenizer_files, None, 0)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("summary.json", "train.log", "loss_curve.png"):  # as large as a GPU run's, with room
        (out / name).write_bytes(b"x" * (1 << 20))
    hf_dir, int8_dir, volumes = export(full, tmp_path / "work", out)
    files = check_outputs(out)
    print(f"{sum(p.numel() for p in Transformer(config).parameters()):,} parameters: {len(files)} files, "
          f"{sum(files.values()) / 2**20:.1f} MiB")
    assert len(files) <= MAX_FILES and sum(files.values()) <= MAX_TOTAL_BYTES
    assert load_model_dir(hf_dir)[0].config.n_layer == config.n_layer
