"""The model directory: config.json, model.safetensors and tokenizer.tiktoken.

config.json carries a `format` version; loaders refuse versions they do not know. Weights are
safetensors only (never pickles). The tied lm_head weight is not stored; it is the embedding.
Weights may be fp32 or our int8 format (int8 tensor + per-output-channel `<name>.scale`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import GPT, GPTConfig
from .tokenizer import CODE_PAT_STR, TOKENIZER_FILE, Tokenizer, TokenizerError, load_tokenizer, special_token_ids

FORMAT = "code-assistant-model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SCALE_SUFFIX = ".scale"


class ModelDirError(ValueError):
    """A model directory that cannot be used; the message names the problem in one line."""


def read_config(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"model directory {model_dir} has no {name}")
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{model_dir / CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelDirError(f"{model_dir / CONFIG_FILE} must hold a JSON object, not {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ModelDirError(f"{model_dir / CONFIG_FILE}: unknown format {config.get('format')!r}, expected {FORMAT!r}")
    for section in ("model", "tokenizer"):
        if not isinstance(config.get(section), dict):
            raise ModelDirError(f"{model_dir / CONFIG_FILE}: '{section}' must be a JSON object")
    return config


def state_dict_to_save(model: GPT) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def save_model_dir(model_dir: str | Path, model: GPT, tokenizer_ranks_file: str | Path,
                   tokenizer_info: dict, training: dict | None = None,
                   tensors: dict[str, torch.Tensor] | None = None, quantization: dict | None = None) -> Path:
    """Write a model directory. `tensors` overrides the weights (for example the int8 ones)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else state_dict_to_save(model)
    save_file(tensors, str(model_dir / WEIGHTS_FILE), metadata={"format": FORMAT})
    src = Path(tokenizer_ranks_file)
    if src.resolve() != (model_dir / TOKENIZER_FILE).resolve():
        (model_dir / TOKENIZER_FILE).write_bytes(src.read_bytes())
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "tokenizer": {"file": TOKENIZER_FILE, **tokenizer_info},
        "weights": {"file": WEIGHTS_FILE, "quantization": quantization},
        "training": training or {},
    }
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return model_dir


def load_tokenizer_from_dir(model_dir: str | Path, config: dict | None = None) -> Tokenizer:
    config = config or read_config(model_dir)
    info = config.get("tokenizer", {})
    try:
        tokenizer = load_tokenizer(Path(model_dir) / TOKENIZER_FILE, pat_str=info.get("pat_str", CODE_PAT_STR),
                                   name=info.get("name", "code-bpe"))
    except TokenizerError as e:
        raise ModelDirError(str(e)) from e
    expected = info.get("special_tokens")
    actual = special_token_ids(tokenizer.n_vocab - len(expected or {}))
    if expected and expected != actual:
        raise ModelDirError(f"{model_dir}: special token ids in config.json {expected} do not match the tokenizer file")
    return tokenizer


def load_tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(Path(model_dir) / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{Path(model_dir) / WEIGHTS_FILE} is not a readable safetensors file: {e}") from e


def dequantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 weights with per-row scales -> fp32; other tensors pass through."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        out[name] = t.float() * scale.float().unsqueeze(-1) if scale is not None else t.float()
    return out


def build_model(config: dict, tensors: dict[str, torch.Tensor], model_dir: str | Path = "") -> GPT:
    try:
        model = GPT(GPTConfig(**config["model"]))
    except (TypeError, ValueError, KeyError) as e:
        raise ModelDirError(f"{model_dir}: bad model config: {e}") from e
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelDirError(f"{model_dir}: weights do not match config.json "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise ModelDirError(f"{model_dir}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                f"config.json implies {tuple(shape)}")
    model.load_state_dict(tensors, strict=False)
    return model


def load_model_dir(model_dir: str | Path) -> tuple[GPT, Tokenizer, dict]:
    """Load an fp32 model (int8 weights are dequantized), its tokenizer and its config."""
    config = read_config(model_dir)
    tokenizer = load_tokenizer_from_dir(model_dir, config)
    model = build_model(config, dequantize(load_tensors(model_dir)), model_dir)
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ModelDirError(f"{model_dir}: tokenizer has {tokenizer.n_vocab} tokens, model only {model.config.vocab_size}")
    return model.eval(), tokenizer, config


def default_model_dir() -> Path:
    """The shipped model: $CODE_ASSISTANT_MODEL, else models/default beside the packages."""
    import os

    env = os.environ.get("CODE_ASSISTANT_MODEL")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models" / "default"
