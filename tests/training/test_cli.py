"""The training CLI end to end, as a user runs it: subprocesses, real files, real DDP processes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import STDLIB

CLI = [sys.executable, "-m", "code_assistant_cli"]
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "tiny.yaml"


def run(*args, check=True, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    run("data", "--src", STDLIB / "json", "--src", STDLIB / "email", "--src", STDLIB / "logging",
        "--out", out, "--vocab-size", 512, "--val-fraction", 0.2)
    return out


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_then_eval_then_resume(data_dir, tmp_path):
    out = tmp_path / "model"
    proc = run("train", "--config", TINY, "--data", data_dir, "--out", out, "--max-steps", 40,
               "--trainer.val_check_interval", 20, "--model.n_layer", 1)
    summary = last_json(proc.stdout)
    assert summary["steps"] == 40 and summary["val_bpb"] > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "run/loss_curve.png",
                 "run/logs/metrics.csv", "run/checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())  # a Hugging Face GPT-2 directory
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["n_layer"] == 1
    assert config["eos_token_id"] == 508
    result = last_json(run("eval", "--model", out, "--data", data_dir).stdout)
    assert result["val_loss"] > 0 and 0 < result["bits_per_byte"] < 8
    by_src = last_json(run("eval", "--model", out, "--src", STDLIB / "json").stdout)
    assert by_src["bits_per_byte"] > 0
    resumed = last_json(run("train", "--config", TINY, "--data", data_dir, "--out", out, "--max-steps", 50,
                            "--trainer.val_check_interval", 20, "--model.n_layer", 1, "--resume").stdout)
    assert resumed["steps"] == 50


@pytest.mark.slow
def test_two_process_cpu_ddp(data_dir, tmp_path):
    """Lightning's ddp strategy launches a second real process; gloo all-reduces the gradients."""
    out = tmp_path / "ddp"
    proc = run("train", "--config", TINY, "--data", data_dir, "--out", out, "--devices", 2, "--max-steps", 30,
               "--trainer.val_check_interval", 10, "--trainer.log_every_n_steps", 5, "--model.n_layer", 1,
               "--data.batch_size", 8)
    summary = last_json(proc.stdout)
    assert summary["world_size"] == 2 and summary["steps"] == 30
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    rows = (out / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train_loss")]) for r in rows[1:] if r.split(",")[header.index("train_loss")]]
    assert losses[-1] < losses[0]
    assert (out / "model.safetensors").is_file()


def one_line_error(proc, *fragments):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in err[0]


def test_bad_inputs_give_one_line_errors(data_dir, tmp_path):
    one_line_error(run("data", "--src", tmp_path / "missing", "--out", tmp_path / "d", check=False), "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(run("data", "--src", tmp_path / "empty", "--out", tmp_path / "d", check=False), "no usable")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 3\n")
    one_line_error(run("train", "--config", bad, "--data", data_dir, "--out", tmp_path / "m", check=False),
                   "unknown key model.n_layers")
    one_line_error(run("eval", "--model", tmp_path / "nomodel", "--data", data_dir, check=False), "does not exist")


def test_broken_model_dirs_are_named(tiny_model_dir, data_dir, tmp_path):
    lacking = tmp_path / "lacking"
    shutil.copytree(tiny_model_dir, lacking)
    (lacking / "model.safetensors").unlink()
    one_line_error(run("eval", "--model", lacking, "--src", STDLIB / "json", check=False), "no model.safetensors")
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_model_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["n_embd"] = 128
    (wrong / "config.json").write_text(json.dumps(config))
    one_line_error(run("eval", "--model", wrong, "--src", STDLIB / "json", check=False), "shape")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    one_line_error(run("eval", "--model", pickled, "--src", STDLIB / "json", check=False), "safetensors")
    other = run("eval", "--model", tiny_model_dir, "--data", data_dir, check=False)
    one_line_error(other, "another tokenizer")
