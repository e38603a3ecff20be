"""`train --resume` after a kill -9: the same metrics CSV and loss curve go on, the summary's
throughput counts every run's training time, and a worse model never replaces a better export."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time

import pytest

from .test_cli import CLI, REPO, TINY, data_dir, last_json, run  # noqa: F401 (data_dir is a fixture)

# Run 1 warms the learning rate up slowly (0.003 at step 1, 0.06 at step 20) and learns; the resumed
# run is told there is no warmup and no decay, so it trains at 3.0 and the model falls apart: every
# validation after the resume is worse than the best one before it.
COMMON = ["--config", TINY, "--trainer.val_check_interval", 10, "--trainer.log_every_n_steps", 5,
          "--model.n_layer", 1, "--optim.learning_rate", 3.0]
CALM = ["--optim.warmup_steps", 1000]
WILD = ["--optim.warmup_steps", 1, "--optim.min_lr_ratio", 1.0]


def checkpoint_step(path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def exported_training(out) -> dict:
    return json.loads((out / "config.json").read_text())["code_assistant"]["training"]


def rows(out) -> list[dict]:
    with open(out / "run" / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_resume_after_kill_keeps_history_true_throughput_and_the_best_export(data_dir, tmp_path):
    out = tmp_path / "model"
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    args = [str(a) for a in ["train", "--data", data_dir, "--out", out, "--max-steps", 400, *COMMON, *CALM]]
    first = subprocess.Popen([*CLI, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        # The export at step 20 comes after the checkpoint at step 20: wait for both, then kill.
        if ckpt.exists() and (out / "config.json").exists():
            try:
                if checkpoint_step(ckpt) >= 20 and exported_training(out)["global_step"] >= 20:
                    break
            except Exception:  # caught mid-write (a torn zip, half a JSON): look again
                pass
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed_from = checkpoint_step(ckpt)
    assert 20 <= resumed_from < 400
    before = rows(out)
    best_before = min(float(r["val_loss"]) for r in before if r["val_loss"])
    exported_before = exported_training(out)

    end = resumed_from + 30
    summary = last_json(run("train", "--data", data_dir, "--out", out, "--max-steps", end, *COMMON, *WILD,
                            "--resume").stdout)
    after = rows(out)
    # One CSV: the rows before the checkpoint are kept as they were, the steps redone after it appear once.
    assert after[:len([r for r in before if int(r["step"]) < resumed_from])] == \
        [r for r in before if int(r["step"]) < resumed_from]
    train_steps = [int(r["step"]) for r in after if r["train_loss"]]
    assert train_steps == sorted(set(train_steps)) and train_steps[0] < 10 and train_steps[-1] >= end - 5
    val_after_resume = [float(r["val_loss"]) for r in after if r["val_loss"] and int(r["step"]) >= resumed_from]
    assert val_after_resume and min(val_after_resume) > best_before  # the wild run got worse
    # The better model stays exported, and the summary says so.
    exported = exported_training(out)
    assert exported["global_step"] == exported_before["global_step"] and exported["val_loss"] == best_before
    assert summary["best_val_loss"] == pytest.approx(best_before)
    # Throughput over the training time of both runs (the first ran at least until its checkpoint).
    tokens = end * 16 * 128
    assert summary["runs"] == 2 and summary["steps"] == end
    assert summary["tokens_per_second"] == pytest.approx(tokens / summary["wall_seconds"], rel=0.01)
    assert summary["wall_seconds"] > summary["runs_seconds"][-1]
    assert (out / "run" / "loss_curve.png").stat().st_size > 0


def exported_training(out) -> dict:
    """What the exported model directory says of its training (config.json's own section)."""
    return json.loads((out / "config.json").read_text())["code_assistant"]["training"]
