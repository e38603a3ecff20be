"""Training configuration: one YAML file per run in LightningCLI's shape (trainer/model/data),
parsed into plain dataclasses. Overrides use the same dotted names: `--model.n_layer 8`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_time_minutes: float | None = None
    devices: int | str = 1
    accelerator: str = "auto"
    strategy: str = "auto"        # "auto": ddp when devices > 1
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


def _build(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    try:
        return cls.for_arch(values) if cls is ModelConfig else cls(**values)
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


def load_config(path: str | Path | None, overrides: dict[str, dict] | None = None) -> TrainConfig:
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {})
        raw[section] = {**(raw[section] or {}), **values}
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed_everything"})
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: seed_everything, {', '.join(SECTIONS)})")
    built = {name: _build(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    return TrainConfig(seed_everything=int(raw.get("seed_everything", 1337)), **built)
