"""`code-assistant train`: run the Lightning trainer and export a model directory.

The model is trained from scratch (the `model:` section) or fine-tuned from a pretrained model
directory (`--init DIR`, training/pretrained.py). The model directory (`--out`) holds the weights
of the best validation loss seen, re-exported whenever validation improves and once more at the
end; `--out/run/` holds Lightning's checkpoints (for `--resume`), the CSV logs and loss_curve.png.
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
from lightning.fabric.loggers.logger import rank_zero_experiment

from engine.model import Block, Transformer
from engine.model_dir import CONFIG_FILE, build_model, save_model_dir

from .config import ConfigError, TrainConfig, window_length
from .data import DataError
from .datamodule import CodeDataModule
from .lit_module import CodeLM
from .pretrained import ExportFormat, load_pretrained


class CheckpointError(ValueError):
    """A checkpoint `--resume` cannot continue from (truncated, foreign, another model's)."""


def read_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint to resume from, loaded as plain tensors and numbers (never arbitrary pickles)
    and checked against this run's model config, so a bad one is one clear error, not a traceback."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"cannot resume from {path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"global_step", "state_dict", "hyper_parameters"} <= set(checkpoint):
        raise CheckpointError(f"cannot resume from {path}: not a checkpoint written by `code-assistant train`")
    saved = checkpoint["hyper_parameters"].get("model", {}) if isinstance(checkpoint["hyper_parameters"], dict) else {}
    for name, value in config.model.to_dict().items():
        if name in saved and saved[name] != value:
            raise CheckpointError(f"cannot resume from {path}: it was trained with model.{name}={saved[name]!r}, "
                                  f"this run has {value!r}")
    return checkpoint


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger starts metrics.csv afresh. A resumed run continues it: the rows logged
    before the step it resumes from stay, the later ones (steps it does again) go."""

    def __init__(self, run_dir: Path, resume_step: int | None, flush_every: int):
        super().__init__(run_dir, name="logs", version="", flush_logs_every_n_steps=flush_every)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or self.resume_step is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept, fields = [], []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                fields = sorted(reader.fieldnames or [])
                kept = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) < self.resume_step]
        writer = super().experiment  # removes the old file
        if kept:
            with open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=fields)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = fields
        return writer


class ExportBest(Callback):
    """Write the model directory when val_loss improves. Every rank calls `export` (under FSDP
    gathering the weights takes them all); rank 0 writes.

    Its state rides in every checkpoint: the best validation loss (so a resumed run never
    replaces a better export) and the training seconds of earlier runs (for true throughput).
    """

    def __init__(self, out_dir: Path, datamodule: CodeDataModule, config: TrainConfig, export_format: ExportFormat,
                 init: Path | None = None, best: float = float("inf")):
        self.out_dir, self.dm, self.config, self.format, self.init = out_dir, datamodule, config, export_format, init
        self.best = best
        self.runs_seconds: list[float] = []   # earlier runs, each up to its last checkpoint
        self.started = time.time()

    def on_train_start(self, trainer, module):
        self.started = time.time()

    def seconds(self) -> float:
        """Training time of every run so far, this one included."""
        return sum(self.runs_seconds) + time.time() - self.started

    def state_dict(self) -> dict:
        return {"best_val_loss": self.best, "runs_seconds": self.runs_seconds + [time.time() - self.started]}

    def load_state_dict(self, state: dict) -> None:
        self.best = min(self.best, float(state.get("best_val_loss", float("inf"))))
        self.runs_seconds = [float(s) for s in state.get("runs_seconds", [])]

    def export(self, trainer: L.Trainer, module: CodeLM, reason: str) -> None:
        state = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        training = {"config": self.config.to_dict(), "init": str(self.init) if self.init else None,
                    "global_step": trainer.global_step,
                    "val_loss": metrics.get("val_loss"), "val_bpb": metrics.get("val_bpb"),
                    "tokens_seen": trainer.global_step * self.dm.config.batch_size * self.dm.block_size
                    * trainer.world_size * trainer.accumulate_grad_batches,
                    "wall_seconds": round(self.seconds(), 1), "exported_because": reason,
                    "data": {k: self.dm.meta["splits"][k]["tokens"] for k in ("train", "val")}}
        f = self.format
        save_model_dir(self.out_dir, unwrapped_model(module.model.config, state), f.tokenizer_files, f.bos_id,
                       f.eos_id, training, f.base_config)

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        if trainer.logger is not None:
            trainer.logger.save()  # the validation row reaches the CSV before a crash can lose it
        val = trainer.callback_metrics.get("val_loss")
        if val is not None and float(val) < self.best:
            self.best = float(val)
            self.export(trainer, module, "best_val_loss")


def unwrapped_model(config, state: dict) -> Transformer:
    """The plain Transformer of a LightningModule's state dict, whatever wrapped it for training
    (torch.compile's `_orig_mod.`; FSDP and activation checkpointing strip their own prefixes)."""
    weights = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith("model.")}
    return build_model(config, weights)


def exported_val_loss(out_dir: Path) -> float:
    """The validation loss recorded with the model directory's weights (inf when there is none)."""
    try:
        raw = json.loads((out_dir / CONFIG_FILE).read_text())
        value = (raw.get("code_assistant") or raw)["training"]["val_loss"]  # ours inside a Hugging Face config
        return float(value) if value is not None else float("inf")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("inf")


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
    if strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        if not cuda:
            raise ConfigError("trainer.strategy fsdp needs CUDA GPUs (Lightning runs FSDP on GPUs only); "
                              "on the CPU use ddp (--devices N)")

        # One transformer block a unit: only one block's full weights exist at a time on each
        # device. "full" state dicts, so the export and last.ckpt are whole models.
        strategy = FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full",
                                activation_checkpointing_policy={Block} if t.activation_checkpointing else None)
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    if not cuda:
        # Flush denormals: without it a small GPT trained ~8x slower on this CPU.
        torch.set_flush_denormal(True)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    return dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)


def prepare_model(config: TrainConfig, data_dir: Path, init: Path | None
                  ) -> tuple[TrainConfig, CodeDataModule, Transformer, ExportFormat]:
    """The data, the model to train (fresh, or from `init`) and what its export carries; the
    config's model section becomes the model's own."""
    pretrained = load_pretrained(init) if init is not None else None
    block_size = pretrained.model.config.block_size if pretrained else config.model.block_size
    dm = CodeDataModule(data_dir, window_length(config.data.seq_len, block_size, pretrained is not None), config.data)
    if pretrained:
        if dm.tokenizer.fingerprint() != pretrained.tokenizer.fingerprint():
            raise DataError(f"{data_dir} was tokenized with another tokenizer than {init}; "
                            f"run `code-assistant data --tokenizer {init}` first")
        model, export_format = pretrained.model, pretrained.export
    else:
        model = Transformer(dataclasses.replace(config.model, vocab_size=dm.tokenizer.n_vocab))
        t = dm.tokenizer
        export_format = ExportFormat(dm.tokenizer_files(block_size), t.bos_ids[0] if t.bos_ids else t.eot_id,
                                     dm.documents.eos_id)
    return dataclasses.replace(config, model=model.config), dm, model, export_format


def train(config: TrainConfig, data_dir: Path, out_dir: Path, resume: bool = False, init: Path | None = None,
          callbacks: tuple[Callback, ...] = (), progress_bar: bool = True) -> dict:
    """`callbacks`: more Lightning callbacks (the GPU recipe's progress lines); `progress_bar`: Lightning's
    own bar on stderr."""
    L.seed_everything(config.seed_everything, workers=True, verbose=False)
    config, dm, model, export_format = prepare_model(config, data_dir, init)
    max_seconds = config.trainer.max_time_minutes * 60 if config.trainer.max_time_minutes else None
    module = CodeLM(model, config.optim, config.trainer.max_steps, dm.tokens_per_byte("val"), max_seconds)
    if config.trainer.activation_checkpointing and config.trainer.strategy != "fsdp":  # FSDP applies its own
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(module.model, check_fn=lambda m: isinstance(m, Block))
    if config.trainer.compile:
        module.model = torch.compile(module.model)
    run_dir = out_dir / "run"
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=config.trainer.val_check_interval)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume_step = read_checkpoint(ckpt, config)["global_step"] if resume and ckpt.exists() else None
    # Resuming: the export beside may be better than the checkpoint knows (exported after it was written).
    export = ExportBest(out_dir, dm, config, export_format, init,
                        exported_val_loss(out_dir) if resume_step is not None else float("inf"))
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
        # Every logged row is written at once: a crash loses nothing the resumed run will not redo.
        logger=ContinuedCSVLogger(run_dir, resume_step, flush_every=t.log_every_n_steps),
        callbacks=[checkpoint, export, *callbacks],
        enable_progress_bar=progress_bar,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        enable_model_summary=True,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if resume_step is not None else None, weights_only=True)
    wall = export.seconds()
    trainer.validate(module, datamodule=dm, verbose=False)  # collective: every rank takes part
    if export.best == float("inf") or float(trainer.callback_metrics["val_loss"]) <= export.best:
        export.export(trainer, module, "final")  # collective too: every rank decides alike (val_loss is synced)
    if not trainer.is_global_zero:
        return {}
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if metrics_csv.exists():
        plot_loss_curve(metrics_csv, run_dir / "loss_curve.png")
    summary = {"model_dir": str(out_dir), "steps": trainer.global_step, "wall_seconds": round(wall, 1),
               "val_loss": float(trainer.callback_metrics["val_loss"]),
               "val_bpb": float(trainer.callback_metrics["val_bpb"]), "best_val_loss": export.best,
               "tokens_per_second": round(trainer.global_step * config.data.batch_size * dm.block_size
                                          * trainer.world_size * t.accumulate_grad_batches / max(wall, 1e-9), 1),
               "params": module.model.num_params(), "world_size": trainer.world_size,
               "runs": len(export.runs_seconds) + 1,
               "runs_seconds": [round(x, 1) for x in export.runs_seconds + [wall - sum(export.runs_seconds)]],
               "precision": trainer.precision}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
