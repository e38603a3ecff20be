"""Every bad file or config is one line on stderr and exit 2, from every command of the CLI
(the delegated ones too: serve, lsp, quantize, bench), never a traceback and never a server that
keeps running without a model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import code_assistant_cli

from .conftest import STDLIB

CLI = [sys.executable, "-m", "code_assistant_cli"]
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "tiny.yaml"


def run(*args, timeout=120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a process of its own."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def run_here(capsys, *args) -> subprocess.CompletedProcess:
    """The same `main` in this process (the imports are paid once): for the many cases of one kind."""
    capsys.readouterr()
    code = code_assistant_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, \
        (proc.returncode, proc.stderr[-3000:])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def broken_model_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    dirs = {}

    def variant(name: str) -> Path:
        dirs[name] = root / name
        shutil.copytree(tiny_model_dir, dirs[name])
        return dirs[name]

    (variant("config-list") / "config.json").write_text("[]")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (variant("layers-word") / "config.json").write_text(json.dumps({**config, "n_layer": "five"}))
    (variant("tokenizer-list") / "tokenizer.json").write_text("[]")
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    (variant("truncated-weights") / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    dirs["missing"] = root / "missing"
    return dirs


BROKEN = ["config-list", "layers-word", "tokenizer-list", "truncated-weights", "missing"]


def model_commands(model: Path, tmp: Path) -> dict[str, list]:
    return {
        "eval": ["eval", "--model", model, "--src", STDLIB / "json"],
        "quantize": ["quantize", "--model", model, "--out", tmp / "q"],
        "serve": ["serve", "--model", model, "--port", "0"],
        "lsp": ["lsp", "--model", model],
        "bench-engine": ["bench", "engine", "--model", model, "--quick", "--out", tmp / "b"],
        "bench-http": ["bench", "http", "--model", model, "--out", tmp / "h"],
    }


@pytest.mark.parametrize("broken", BROKEN)
@pytest.mark.parametrize("command", ["eval", "quantize", "serve", "lsp", "bench-engine"])
def test_a_broken_model_dir_is_one_line_and_exit_2(broken_model_dirs, tmp_path, capsys, broken, command):
    model = broken_model_dirs[broken]
    assert_one_line_exit_2(run_here(capsys, *model_commands(model, tmp_path)[command]), str(model))


# As real processes: the server and the benchmark that starts one must stop by themselves.
@pytest.mark.parametrize("command, broken", [("serve", "truncated-weights"), ("lsp", "config-list"),
                                             ("bench-http", "truncated-weights"), ("quantize", "layers-word")])
def test_a_broken_model_dir_stops_the_real_process(broken_model_dirs, tmp_path, command, broken):
    model = broken_model_dirs[broken]
    assert_one_line_exit_2(run(*model_commands(model, tmp_path)[command], timeout=90), str(model))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    proc = run("data", "--src", STDLIB / "json", "--src", STDLIB / "email", "--out", out, "--vocab-size", 512,
               "--val-fraction", 0.2)
    assert proc.returncode == 0, proc.stderr
    return out


CONFIGS = [
    ("max-steps-ten", "trainer: {max_steps: ten}\n", "trainer.max_steps"),
    ("model-5", "model: 5\n", "model"),
    ("top-level-list", "- 1\n- 2\n", "mapping"),
    ("seed-word", "seed_everything: abc\n", "seed_everything"),
    ("negative-batch", "data: {batch_size: -4}\n", "data.batch_size"),
    ("lr-string", "optim: {learning_rate: fast}\n", "optim.learning_rate"),
    ("devices-list", "trainer: {devices: [1, 2]}\n", "trainer.devices"),
    ("not-yaml", "trainer: {max_steps: [\n", "YAML"),
]


@pytest.mark.parametrize("text, fragment", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_a_bad_training_config_is_one_line_and_exit_2(data_dir, tmp_path, capsys, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert_one_line_exit_2(run_here(capsys, "train", "--config", config, "--data", data_dir, "--out", tmp_path / "m"),
                           fragment)


def test_a_bad_override_is_one_line_and_exit_2_in_a_real_process(data_dir, tmp_path):
    assert_one_line_exit_2(run("train", "--config", TINY, "--data", data_dir, "--out", tmp_path / "m",
                               "--trainer.max_steps", "ten"), "trainer.max_steps")


@pytest.mark.parametrize("kind", ["truncated", "foreign", "other-shape"])
def test_resume_from_a_bad_checkpoint_is_one_line_and_exit_2(data_dir, tmp_path, capsys, kind):
    out = tmp_path / "m"
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if kind == "truncated":
        torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        torch.save({"global_step": 3, "state_dict": {}, "hyper_parameters": {"model": {"n_layer": 7}}}, ckpt)
    proc = run_here(capsys, "train", "--config", TINY, "--data", data_dir, "--out", out, "--model.n_layer", 1,
                    "--resume")
    assert_one_line_exit_2(proc, str(ckpt))
    if kind == "other-shape":
        assert "n_layer" in proc.stderr
