"""The LightningModule: the Transformer from `engine`, next-token loss, AdamW with warmup + cosine."""
from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F

from engine.model import Transformer

from .config import OptimConfig


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float,
              time_progress: float = 0.0) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps, or at the time budget's
    end if that comes first (`time_progress` = elapsed / max_time), so a time-boxed run still anneals."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, max(time_progress, (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CodeLM(L.LightningModule):
    """`model`: a fresh Transformer, or a pretrained one to fine-tune."""

    def __init__(self, model: Transformer, optim: OptimConfig, max_steps: int, tokens_per_byte: float,
                 max_seconds: float | None = None):
        super().__init__()
        self.save_hyperparameters({"model": model.config.to_dict(), "optim": vars(optim),
                                   "max_steps": max_steps, "tokens_per_byte": tokens_per_byte})
        self.model = model
        self.optim, self.max_steps, self.tokens_per_byte = optim, max_steps, tokens_per_byte
        self.max_seconds, self.fit_started = max_seconds, None

    def on_train_start(self) -> None:
        self.fit_started = time.monotonic()

    def time_progress(self) -> float:
        if not self.max_seconds or self.fit_started is None:
            return 0.0
        return (time.monotonic() - self.fit_started) / self.max_seconds

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :-1], batch[:, 1:]
        logits = self.model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        self.log("tokens_seen", float(self.global_step * batch.numel() * self.trainer.world_size),
                 reduce_fx="max")
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_bpb", loss / math.log(2) * self.tokens_per_byte, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        # Biases and norms get no weight decay. Told by name: under FSDP every parameter is a flat shard.
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if n.endswith(".bias") or "norm." in n]
        decay = [p for n, p in named if not (n.endswith(".bias") or "norm." in n)]
        o = self.optim
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=o.learning_rate, betas=(o.beta1, o.beta2))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, o.warmup_steps, self.max_steps, o.min_lr_ratio, self.time_progress()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
