"""Training configuration: one YAML file per run in LightningCLI's shape (trainer/model/data),
parsed into plain dataclasses. Overrides use the same dotted names: `--model.n_layer 8`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

import yaml

from engine.model import ModelConfig


class ConfigError(ValueError):
    pass


@dataclass
class OptimConfig:
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95


@dataclass
class DataConfig:
    batch_size: int = 16
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    num_workers: int = 0
    val_batches: int = 20
    seq_len: int = 0              # tokens per training window; 0: see window_length


# The default window of a pretrained model whose context is longer (Qwen2.5-Coder's 32 K
# positions): the cost of a step grows with the window, and most code files are shorter.
MAX_SEQ_LEN = 2048


def window_length(seq_len: int, block_size: int, pretrained: bool = True) -> int:
    """Tokens per training or evaluation window of a model with `block_size` positions: `seq_len`,
    or when 0 the whole context of a model trained from scratch (its learned positions all get
    trained) and at most MAX_SEQ_LEN of a pretrained one."""
    if seq_len < 0 or seq_len > block_size:
        raise ConfigError(f"data.seq_len must be between 1 and the model's context ({block_size}), got {seq_len}")
    return seq_len or (min(block_size, MAX_SEQ_LEN) if pretrained else block_size)


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_time_minutes: float | None = None
    devices: int | str = 1
    accelerator: str = "auto"
    strategy: str = "auto"        # "auto": ddp when devices > 1; "fsdp": sharded, one block a unit
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    precision: str = "auto"       # "auto": bf16-mixed on CUDA, 32-true on the CPU
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_check_interval: int = 200
    log_every_n_steps: int = 10
    compile: bool = False


@dataclass
class TrainConfig:
    seed_everything: int = 1337
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"trainer": TrainerConfig, "model": ModelConfig, "optim": OptimConfig, "data": DataConfig}


# Ranges checked here, so a value out of them is one clear error rather than a traceback from
# deep inside Lightning or the first training step.
LIMITS = {
    **dict.fromkeys(["max_steps", "val_check_interval", "log_every_n_steps", "accumulate_grad_batches",
                     "batch_size", "val_batches"], (1, math.inf)),
    **dict.fromkeys(["warmup_steps", "num_workers", "gradient_clip_val", "weight_decay", "max_time_minutes",
                     "seq_len"], (0, math.inf)),
    **dict.fromkeys(["fim_rate", "spm_rate", "min_lr_ratio", "dropout", "beta1", "beta2"], (0.0, 1.0)),
    "learning_rate": (1e-12, math.inf),
}


def _checked(value, hint, name: str):
    """`value` as the field's type wants it, or a ConfigError naming the field. YAML 1.1 reads `1e-3`
    as a string, so numeric strings are accepted where a float belongs."""
    kinds = [kind for kind in get_args(hint)] if get_origin(hint) in (Union, UnionType) else [hint]
    for kind in kinds:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and not isinstance(value, bool):
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    return number
        if kind in (str, dict) and isinstance(value, kind):
            return value
    wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
    raise ConfigError(f"{name} must be {wanted}, got {value!r}")


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"section {where} must be a mapping of keys to values, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    hints = get_type_hints(cls)
    checked = {}
    for name, value in values.items():
        checked[name] = _checked(value, hints[name], f"{where}.{name}")
        low, high = LIMITS.get(name, (-math.inf, math.inf))
        if isinstance(checked[name], (int, float)) and not low <= checked[name] <= high:
            raise ConfigError(f"{where}.{name} must be in [{low}, {high}], got {value!r}")
    try:
        return cls.for_arch(checked) if cls is ModelConfig else cls(**checked)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in {where}: {e}") from e


def parse_overrides(args: list[str]) -> dict[str, dict]:
    """['--model.n_layer', '8', '--trainer.devices=2'] -> {'model': {'n_layer': 8}, 'trainer': {'devices': 2}}"""
    out: dict[str, dict] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None, overrides: dict[str, dict] | None = None,
                pretrained: bool = False) -> TrainConfig:
    """`pretrained`: the model comes from a directory (`train --init`), so a model section is an error."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping (trainer:, model:, optim:, data:)")
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed_everything"})
    unknown += sorted(set(overrides or {}) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: seed_everything, {', '.join(SECTIONS)})")
    for section, values in (overrides or {}).items():
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"section {section} must be a mapping of keys to values, got {raw[section]!r}")
        raw[section] = {**(raw.get(section) or {}), **values}
    if pretrained and raw.get("model"):
        raise ConfigError(f"model.{sorted(raw['model'])[0]}: with --init the model comes from its directory; "
                          f"leave out the model section")
    built = {name: _build(cls, {} if raw.get(name) is None else raw[name], name) for name, cls in SECTIONS.items()}
    seed = _checked(raw.get("seed_everything", 1337), int, "seed_everything")
    return TrainConfig(seed_everything=seed, **built)
