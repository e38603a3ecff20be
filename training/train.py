"""`code-assistant train`: run the Lightning trainer and export a model directory.

The model directory (`--out`) holds the weights of the best validation loss seen, re-exported
whenever validation improves and once more at the end; `--out/run/` holds Lightning's checkpoints
(for `--resume`), the CSV logs and loss_curve.png.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from engine.model_dir import save_model_dir

from .config import TrainConfig
from .datamodule import CodeDataModule
from .lit_module import CodeLM


class ExportBest(Callback):
    """Write the model directory when val_loss improves (rank 0 only)."""

    def __init__(self, out_dir: Path, datamodule: CodeDataModule, config: TrainConfig):
        self.out_dir, self.dm, self.config = out_dir, datamodule, config
        self.best = float("inf")
        self.started = time.time()

    def export(self, trainer: L.Trainer, module: CodeLM, reason: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        training = {"config": self.config.to_dict(), "global_step": trainer.global_step,
                    "val_loss": metrics.get("val_loss"), "val_bpb": metrics.get("val_bpb"),
                    "tokens_seen": trainer.global_step * self.dm.config.batch_size * module.model.config.block_size
                    * trainer.world_size * trainer.accumulate_grad_batches,
                    "wall_seconds": round(time.time() - self.started, 1), "exported_because": reason,
                    "data": {k: self.dm.meta["splits"][k]["tokens"] for k in ("train", "val")}}
        tokenizer = self.dm.tokenizer
        save_model_dir(self.out_dir, module.model, self.dm.tokenizer_files(module.model.config.block_size),
                       tokenizer.bos_ids[0] if tokenizer.bos_ids else tokenizer.eot_id, tokenizer.eot_id, training)

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val_loss")
        if val is not None and float(val) < self.best:
            self.best = float(val)
            self.export(trainer, module, "best_val_loss")


def plot_loss_curve(metrics_csv: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {"train_loss": [], "val_loss": []}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key in series:
                if row.get(key):
                    series[key].append((int(row["step"]), float(row[key])))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        if points:
            ax.plot(*zip(*points), label=key, marker="o" if key == "val_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def resolve_trainer_args(config: TrainConfig) -> dict:
    t = config.trainer
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "cuda", "gpu")
    accelerator = "gpu" if cuda else ("cpu" if t.accelerator == "auto" else t.accelerator)
    devices = t.devices
    n = devices if isinstance(devices, int) else (torch.cuda.device_count() if cuda else 1)
    strategy = t.strategy if t.strategy != "auto" else ("ddp" if n > 1 else "auto")
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    if not cuda:
        # Flush denormals: without it a small GPT trained ~8x slower on this CPU.
        torch.set_flush_denormal(True)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    return dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)


def train(config: TrainConfig, data_dir: Path, out_dir: Path, resume: bool = False) -> dict:
    L.seed_everything(config.seed_everything, workers=True, verbose=False)
    dm = CodeDataModule(data_dir, config.model.block_size, config.data)
    n_vocab = dm.tokenizer.n_vocab
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=n_vocab))
    max_seconds = config.trainer.max_time_minutes * 60 if config.trainer.max_time_minutes else None
    module = CodeLM(config.model, config.optim, config.trainer.max_steps, dm.tokens_per_byte("val"), max_seconds)
    if config.trainer.compile:
        module.model = torch.compile(module.model)
    run_dir = out_dir / "run"
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=config.trainer.val_check_interval)
    export = ExportBest(out_dir, dm, config)
    t = config.trainer
    trainer = L.Trainer(
        **resolve_trainer_args(config),
        max_steps=t.max_steps,
        max_time={"minutes": t.max_time_minutes} if t.max_time_minutes else None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=config.data.val_batches,
        log_every_n_steps=t.log_every_n_steps,
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=[checkpoint, export],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        enable_model_summary=True,
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    started = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if resume and ckpt.exists() else None)
    wall = time.time() - started
    trainer.validate(module, datamodule=dm, verbose=False)  # collective: every rank takes part
    if not trainer.is_global_zero:
        return {}
    if export.best == float("inf") or float(trainer.callback_metrics["val_loss"]) <= export.best:
        export.export(trainer, module, "final")
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if metrics_csv.exists():
        plot_loss_curve(metrics_csv, run_dir / "loss_curve.png")
    summary = {"model_dir": str(out_dir), "steps": trainer.global_step, "wall_seconds": round(wall, 1),
               "val_loss": float(trainer.callback_metrics["val_loss"]),
               "val_bpb": float(trainer.callback_metrics["val_bpb"]), "best_val_loss": export.best,
               "tokens_per_second": round(trainer.global_step * config.data.batch_size * config.model.block_size
                                          * trainer.world_size * t.accumulate_grad_batches / max(wall, 1e-9), 1),
               "params": module.model.num_params(), "world_size": trainer.world_size}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
