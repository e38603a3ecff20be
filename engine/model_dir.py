"""Model directories: a Hugging Face folder as it is, or this project's first format.

A Hugging Face directory holds `config.json` (its `architectures` names the family), the weights in
`model.safetensors` or shards listed by `model.safetensors.index.json` (fp32, bf16 or fp16), and
`tokenizer.json` with `tokenizer_config.json` / `special_tokens_map.json`. The models `train`
exports are such directories. Our int8 copies keep the Hugging Face config.json plus a
`code_assistant` section naming the quantization, and store the weights under our own names.

The first format (`"format": "code-assistant-model/1"` in config.json: GPT-2 weights under
nanoGPT's names, a tiktoken rank file) keeps loading. Weights are safetensors only, never pickles.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .families import FamilyError, config_from_hf, iter_ours, weight_rules
from .model import ModelConfig, Transformer
from .model_checks import (ModelDirError, check_int4_shapes, check_int8_shapes, check_layer_count,
                           check_tensor_shapes, read_checkpoint_headers, read_json_object, shard_path, validate_config)
from .tokenizer import (CODE_PAT_STR, HF_TOKENIZER_FILE, TOKENIZER_FILE, Tokenizer, TokenizerError, load_hf_tokenizer,
                        load_tokenizer, special_token_ids)

LEGACY_FORMAT = "code-assistant-model/1"
FORMAT = "code-assistant-model/2"   # the `code_assistant` section of a Hugging Face config.json
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SCALE_SUFFIX = ".scale"


@dataclass
class ModelDir:
    path: Path
    config: ModelConfig
    raw: dict                    # config.json as read
    legacy: bool                 # this project's first format
    quantization: dict | None    # our int8 marker, None for float weights
    name: str                    # what the model is served as: config.json's name, else the folder's

    @property
    def int8(self) -> bool:
        return bool(self.quantization)


def read_model_dir(path: str | Path) -> ModelDir:
    """config.json of a model directory, checked; the weights are read by `load_state`. `path` may
    also be a GGUF file, an Ollama name or a Hugging Face name (engine/hub.py)."""
    from .hub import resolve_model  # hub.py imports this module's error

    path = resolve_model(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise ModelDirError(f"model directory {path} has no {CONFIG_FILE}")
    raw = read_json_object(path / CONFIG_FILE, model_dir=path)
    if "format" in raw:
        if raw["format"] != LEGACY_FORMAT:
            raise ModelDirError(f"{path / CONFIG_FILE}: unknown format {raw['format']!r}, expected {LEGACY_FORMAT!r} "
                                f"or a Hugging Face config")
        model = raw.get("model")
        if not isinstance(model, dict):
            raise ModelDirError(f"{path / CONFIG_FILE}: \"model\" must be an object of model fields")
        try:
            config = ModelConfig(arch="gpt2", **model)
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ModelDirError(f"{path / CONFIG_FILE}: bad model config: {e}") from e
        validate_config(config, path / CONFIG_FILE)
        info = raw.get("tokenizer") or {}
        specials = info.get("special_tokens") or {} if isinstance(info, dict) else None
        if (not isinstance(info, dict) or not all(isinstance(info.get(k, ""), str) for k in ("pat_str", "name"))
                or not isinstance(specials, dict) or not all(isinstance(i, int) for i in specials.values())):
            raise ModelDirError(f"{path / CONFIG_FILE}: \"tokenizer\" must be an object of strings "
                                f"(pat_str, name) and special_tokens (names to ids)")
        weights = raw.get("weights") or {}
        quantization = weights.get("quantization") if isinstance(weights, dict) else None
        for name in (WEIGHTS_FILE, TOKENIZER_FILE):
            if not (path / name).is_file():
                raise ModelDirError(f"model directory {path} has no {name}")
        return ModelDir(path, config, raw, True, _quantization(quantization, path), _name(raw.get("name"), path))
    own = raw.get("code_assistant") or {}
    if not isinstance(own, dict):
        raise ModelDirError(f"{path / CONFIG_FILE}: \"code_assistant\" must be an object")
    if own and own.get("format") != FORMAT:
        raise ModelDirError(f"{path / CONFIG_FILE}: unknown code_assistant format {own.get('format')!r}, "
                            f"expected {FORMAT!r}")
    try:
        config = config_from_hf(raw)
    except FamilyError as e:
        raise ModelDirError(f"{path / CONFIG_FILE}: {e}") from e
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ModelDirError(f"{path / CONFIG_FILE}: bad model config: {e}") from e
    validate_config(config, path / CONFIG_FILE)
    if not (path / WEIGHTS_FILE).is_file() and not (path / WEIGHTS_INDEX).is_file():
        raise ModelDirError(f"model directory {path} has no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX}); "
                            f"only safetensors weights are loaded")
    if not (path / HF_TOKENIZER_FILE).is_file():
        raise ModelDirError(f"model directory {path} has no {HF_TOKENIZER_FILE}")
    return ModelDir(path, config, raw, False, _quantization(own.get("quantization"), path),
                    _name(own.get("name"), path))


def _quantization(value: object, path: Path) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise ModelDirError(f"{path / CONFIG_FILE}: the quantization entry must be an object, got {value!r}")
    return value or None


def _name(value: object, path: Path) -> str:
    from .hub import served_name

    if value is None or value == "":
        return served_name(path)
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise ModelDirError(f"{path / CONFIG_FILE}: the model name must be a short printable string")
    return value


# ---- weights ------------------------------------------------------------------------------------
class _Checkpoint:
    """Tensors of one or more safetensors files, read on demand by name. The headers are read and
    checked first (`tensors`: name -> dtype, shape, file), before any data."""

    def __init__(self, model_dir: Path):
        index = model_dir / WEIGHTS_INDEX
        if (model_dir / WEIGHTS_FILE).is_file():
            self.where = {}
            files = [model_dir / WEIGHTS_FILE]
        else:
            weight_map = read_json_object(index, model_dir=model_dir).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelDirError(f"{index} is not a valid safetensors index: no \"weight_map\" object")
            self.where = {name: shard_path(model_dir, index, file) for name, file in weight_map.items()}
            files = list(self.where.values())
        self.tensors = read_checkpoint_headers(files, model_dir)
        for name, file in self.where.items():
            if name not in self.tensors or self.tensors[name].file != file:
                raise ModelDirError(f"{index}: tensor {name!r} is not in {file.name}")
        self.handles: dict[Path, object] = {}
        self.model_dir = model_dir

    def _open(self, path: Path):
        if path not in self.handles:
            try:
                self.handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as e:
                raise ModelDirError(f"{path} is not a readable safetensors file: {e}") from e
        return self.handles[path]

    def names(self) -> set[str]:
        return set(self.tensors)

    def __call__(self, name: str) -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise ModelDirError(f"{self.model_dir}: the weights have no tensor {name!r}")
        try:
            tensor = self._open(info.file).get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelDirError(f"{info.file}: cannot read tensor {name!r}: {e}") from e
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelDirError(f"{info.file}: tensor {name!r} holds NaN or infinite values")
        return tensor


def check_weights_files(path: str | Path) -> None:
    """What `load_state` checks, without keeping the weights: every file inside the directory,
    its header and the config's shapes agreeing, every tensor readable and finite (read one at a
    time). For a process that hands the directory to another one to load."""
    model_dir = read_model_dir(path)
    checkpoint, _ = _checked_checkpoint(model_dir)
    for name in checkpoint.names():
        checkpoint(name)


def _checked_checkpoint(model_dir: ModelDir) -> tuple[_Checkpoint, dict[str, tuple[int, ...]]]:
    """The checkpoint, its headers checked against the config; and our tensors' shapes."""
    checkpoint = _Checkpoint(model_dir.path)
    check_layer_count(model_dir.config, checkpoint.tensors, model_dir.path / CONFIG_FILE)
    expected = expected_shapes(model_dir.config)
    if model_dir.int8 and str(model_dir.quantization.get("method")).startswith("int4"):
        from .quantize import INT4_GROUP, INT4_PAD, check_int4_layout, int4_kept_int8  # quantize.py imports this module

        check_int4_layout(model_dir)
        check_int4_shapes(expected, checkpoint.tensors, model_dir.path, SCALE_SUFFIX, INT4_GROUP, INT4_PAD,
                          int4_kept_int8(model_dir.config))
    elif model_dir.int8:
        check_int8_shapes(expected, _legacy_names(model_dir), checkpoint.tensors, model_dir.path, SCALE_SUFFIX)
    else:
        check_tensor_shapes(expected, weight_rules(model_dir.config, legacy=model_dir.legacy), checkpoint.tensors,
                            model_dir.path)
    return checkpoint, expected


def _legacy_names(model_dir: ModelDir) -> dict[str, str]:
    """int8 copies of the first format keep its names: ours -> stored."""
    if not model_dir.legacy:
        return {}
    return {r.ours: r.theirs[0] for r in weight_rules(model_dir.config, legacy=True)}


def load_state(model_dir: ModelDir, dtype: torch.dtype = torch.float32,
               transform: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
               ) -> dict[str, torch.Tensor]:
    """Our state dict (our tensor names) of a model directory. Float tensors become `dtype`; int8
    weights stay int8 beside their `.scale`. `transform(name, tensor)` may replace each tensor as it
    is read (the int8 loader quantizes there, so the float copy of the whole model never exists)."""
    if isinstance(model_dir.quantization, dict) and str(model_dir.quantization.get("method")).startswith("int4"):
        raise ModelDirError(f"{model_dir.path} holds int4 weights, which only Engine.load(..., quantize='int4') runs")
    checkpoint, expected = _checked_checkpoint(model_dir)
    if model_dir.int8:
        stored = checkpoint.names()
        rename = _legacy_names(model_dir)

        def pairs():
            for name in expected:
                source = rename.get(name, name)
                yield name, checkpoint(source)
                if source + SCALE_SUFFIX in stored:
                    yield name + SCALE_SUFFIX, checkpoint(source + SCALE_SUFFIX)
    else:
        def read(name: str) -> torch.Tensor:
            t = checkpoint(name)
            return t.to(dtype) if t.is_floating_point() else t

        pairs = lambda: iter_ours(model_dir.config, read, legacy=model_dir.legacy)  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for name, tensor in pairs():
        shape = expected.get(name)
        if shape is not None and tuple(tensor.shape) != shape:
            raise ModelDirError(f"{model_dir.path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                f"config.json implies {shape}")
        state.update(transform(name, tensor) if transform is not None else {name: tensor})
        del tensor  # the float copy goes before the next one is read
    missing = [name for name in expected if name not in state]
    if missing:
        raise ModelDirError(f"{model_dir.path}: the weights have no tensor for {missing[0]!r}")
    return state


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not (config.tie_embeddings and k == "head.weight")}


def build_model(config: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding `state` (float tensors, our names) without a random init first."""
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.head.weight = model.embed.weight
    return model.eval()


def dequantize(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """int8 weights with per-row scales -> float; other tensors pass through."""
    out = {}
    for name, t in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name + SCALE_SUFFIX)
        out[name] = (t.float() * scale.float().unsqueeze(-1)).to(dtype) if scale is not None else t.to(dtype)
    return out


# ---- tokenizer ----------------------------------------------------------------------------------
def load_tokenizer_from_dir(model_dir: ModelDir | str | Path) -> Tokenizer:
    if not isinstance(model_dir, ModelDir):
        model_dir = read_model_dir(model_dir)
    # config.json's vocab_size bounds the tokenizer files: it is checked against the weights' headers first.
    _checked_checkpoint(model_dir)
    try:
        if model_dir.legacy:
            info = model_dir.raw.get("tokenizer") or {}
            tokenizer = load_tokenizer(model_dir.path / TOKENIZER_FILE, pat_str=info.get("pat_str", CODE_PAT_STR),
                                       name=info.get("name", "code-bpe"), max_vocab=model_dir.config.vocab_size)
            expected = info.get("special_tokens")
            if expected and expected != special_token_ids(tokenizer.n_vocab - len(expected)):
                raise ModelDirError(f"{model_dir.path}: special token ids in config.json {expected} do not match "
                                    f"the tokenizer file")
        else:
            eos = model_dir.raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
            if not all(isinstance(i, int) and 0 <= i < model_dir.config.vocab_size for i in eos_ids):
                raise ModelDirError(f"{model_dir.path / CONFIG_FILE}: eos_token_id {eos!r} is not a token id "
                                    f"below vocab_size {model_dir.config.vocab_size}")
            fim_ids, eot_id = _given_special_ids(model_dir)
            tokenizer = load_hf_tokenizer(model_dir.path, eos_ids, max_vocab=model_dir.config.vocab_size,
                                          fim_ids=fim_ids, eot_id=eot_id)
    except TokenizerError as e:
        raise ModelDirError(str(e)) from e
    if tokenizer.n_vocab > model_dir.config.vocab_size:
        raise ModelDirError(f"{model_dir.path}: tokenizer has {tokenizer.n_vocab} tokens, the model only "
                            f"{model_dir.config.vocab_size}")
    return tokenizer


def _given_special_ids(model_dir: ModelDir) -> tuple[tuple[int, int, int] | None, int | None]:
    """The FIM (prefix, suffix, middle) and end-of-text ids config.json's code_assistant section
    names (`fim_token_ids`, `eot_token_id`: a GGUF file's metadata, engine/gguf.py), or None each."""
    own = model_dir.raw.get("code_assistant") or {}
    fim, eot = own.get("fim_token_ids"), own.get("eot_token_id")
    n = model_dir.config.vocab_size

    def is_id(i) -> bool:
        return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n

    if fim is not None and not (isinstance(fim, list) and len(fim) == 3 and all(map(is_id, fim))):
        raise ModelDirError(f"{model_dir.path / CONFIG_FILE}: code_assistant.fim_token_ids {fim!r} must be three "
                            f"token ids (prefix, suffix, middle) below vocab_size {n}")
    if eot is not None and not is_id(eot):
        raise ModelDirError(f"{model_dir.path / CONFIG_FILE}: code_assistant.eot_token_id {eot!r} is not a token id "
                            f"below vocab_size {n}")
    return (tuple(fim) if fim is not None else None), eot


# ---- the whole model ----------------------------------------------------------------------------
def load_model_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, Tokenizer, ModelDir]:
    """A float model (int8 weights are dequantized), its tokenizer and its directory."""
    model_dir = read_model_dir(path)
    tokenizer = load_tokenizer_from_dir(model_dir)
    state = load_state(model_dir, dtype)
    if model_dir.int8:
        state = dequantize(state, dtype)
    return build_model(model_dir.config, state), tokenizer, model_dir


def save_model_dir(out: str | Path, model: Transformer, tokenizer_files: dict[str, str], bos_id: int | None,
                   eos_id: int | None, training: dict | None = None, base_config: dict | None = None) -> Path:
    """Write a model as a Hugging Face directory (config.json in its class's terms, the weights
    under its names, the tokenizer files) that transformers, vLLM or llama.cpp's converter load.
    A fine-tuned model passes its base model's config.json as `base_config`: it is kept as it is
    (every field the family's loaders read), but for the dtype of the weights written here."""
    from .families import hf_config, to_hf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not (model.config.tie_embeddings and k == "head.weight")}
    tensors = to_hf(model.config, {k: v.float() for k, v in state.items()})
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    if base_config is not None:
        raw = {**base_config, **{k: "float32" for k in ("torch_dtype", "dtype") if k in base_config}}
    else:
        raw = hf_config(model.config, bos_id, eos_id)
    raw["code_assistant"] = {"format": FORMAT, "quantization": None, "training": training or {}}
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    for file_name, text in tokenizer_files.items():
        (out / file_name).write_text(text, encoding="utf-8")
    return out


def save_int8_dir(out: str | Path, source: ModelDir, state: dict[str, torch.Tensor], quantization: dict) -> Path:
    """Write an int8 copy: the source's config.json (plus our section) and tokenizer files, the
    weights under our names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    raw = dict(source.raw)
    if source.legacy:
        raw["weights"] = {"file": WEIGHTS_FILE, "quantization": quantization}
        files = [TOKENIZER_FILE]
    else:
        raw["code_assistant"] = {**(raw.get("code_assistant") or {}), "format": FORMAT, "quantization": quantization}
        files = [HF_TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
    for name in files:
        if (source.path / name).is_file() and (source.path / name).resolve() != (out / name).resolve():
            (out / name).write_bytes((source.path / name).read_bytes())
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return out


def default_model_dir() -> Path:
    """The shipped model: $CODE_ASSISTANT_MODEL, else the copy an installed wheel carries
    (engine/models/default, put there by setup.py), else models/default of the checkout."""
    env = os.environ.get("CODE_ASSISTANT_MODEL")
    if env:
        return Path(env)
    installed = Path(__file__).resolve().parent / "models" / "default"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "models" / "default"
