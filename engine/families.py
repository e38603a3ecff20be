"""Hugging Face model families: their config.json to a ModelConfig, their weight names to ours.

One table per family says how each of our tensors is made from the checkpoint's: copied, transposed
(GPT-2's Conv1D layers store (in, out)), or concatenated (separate q/k/v projections become our
fused `qkv`; gate and up projections our fused `mlp.up`). The same rules run backwards to export a
model we trained as a Hugging Face directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .model import ModelConfig

# The Hugging Face class each family is saved as, and back.
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "gpt_bigcode": "GPTBigCodeForCausalLM", "llama": "LlamaForCausalLM",
              "qwen2": "Qwen2ForCausalLM", "starcoder2": "Starcoder2ForCausalLM"}
ARCH_OF_CLASS = {cls: arch for arch, cls in HF_CLASSES.items()}
# transformers' names for the activations we have ("gelu_new" and "gelu_pytorch_tanh" are both
# the tanh approximation).
ACTIVATION_NAMES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "silu": "silu",
                    "swish": "silu", "relu": "relu"}


class FamilyError(ValueError):
    """A checkpoint this engine cannot run; the message names what is unsupported."""


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    kind: str = "copy"   # copy | transpose | cat | heads (GPTBigCode's per-head q/k/v interleave)


def architecture(hf_config: dict) -> str:
    names = hf_config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise FamilyError("config.json names no architecture (\"architectures\": [...])")
    for name in names:
        if name in ARCH_OF_CLASS:
            return ARCH_OF_CLASS[name]
    raise FamilyError(f"unsupported architecture {names[0]!r} (supported: {', '.join(ARCH_OF_CLASS)})")


def _rope(hf: dict) -> tuple[float, dict | None]:
    """rope_theta and scaling from either transformers 5's `rope_parameters` or 4's
    `rope_theta` + `rope_scaling` (what most downloaded checkpoints carry)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise FamilyError(f"rope_scaling must be an object, got {params!r}")
    params = dict(params)
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, int) and not isinstance(theta, bool):
        theta = float(theta)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings")
                          or hf.get("max_position_embeddings"))
    if hf.get("partial_rotary_factor", 1.0) != 1.0 or params.get("partial_rotary_factor", 1.0) != 1.0:
        raise FamilyError("partial rotary embeddings are not supported")
    return theta, {"rope_type": rope_type, **params}


def _activation(name: str) -> str:
    if name not in ACTIVATION_NAMES:
        raise FamilyError(f"unsupported activation {name!r} (supported: {', '.join(ACTIVATION_NAMES)})")
    return ACTIVATION_NAMES[name]


def _window(hf: dict, n_layer: int) -> int:
    """One sliding window for all layers, or 0; a mix of windowed and full layers is refused."""
    window = hf.get("sliding_window") or 0
    if not window or hf.get("use_sliding_window") is False:
        return 0
    types = hf.get("layer_types")
    if types and len(set(types)) > 1:
        raise FamilyError("a mix of sliding-window and full-attention layers is not supported")
    if types and types[0] == "full_attention" and len(types) == n_layer:
        return 0
    if not isinstance(window, int) or isinstance(window, bool):
        raise FamilyError(f"sliding_window must be an integer, got {window!r}")
    return window


def config_from_hf(hf: dict) -> ModelConfig:
    """Our config for a Hugging Face config.json; FamilyError for what we cannot run exactly."""
    arch = architecture(hf)
    try:
        if arch in ("gpt2", "gpt_bigcode"):
            if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
                raise FamilyError("GPT-2 attention scaling variants are not supported")
            n_head = hf["n_head"]
            return ModelConfig(
                arch=arch, vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                n_head=n_head, n_embd=hf["n_embd"], intermediate_size=hf.get("n_inner") or 0,
                n_kv_head=1 if arch == "gpt_bigcode" and hf.get("multi_query", True) else n_head,
                norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu",
                activation=_activation(hf.get("activation_function", "gelu_new" if arch == "gpt2"
                                                 else "gelu_pytorch_tanh")),
                position="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True))
        theta, scaling = _rope(hf)
        common = dict(
            arch=arch, vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], head_dim=hf.get("head_dim") or 0,
            intermediate_size=hf["intermediate_size"], position="rope", rope_theta=theta, rope_scaling=scaling,
            sliding_window=_window(hf, hf["num_hidden_layers"]))
        if arch == "starcoder2":
            bias = hf.get("use_bias", True)
            return ModelConfig(**common, norm="layernorm", norm_eps=hf.get("norm_epsilon", 1e-5), mlp="gelu",
                               activation=_activation(hf.get("hidden_act", "gelu_pytorch_tanh")),
                               qkv_bias=bias, out_bias=bias, mlp_bias=bias,
                               tie_embeddings=hf.get("tie_word_embeddings", True))
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise FamilyError(f"unsupported gated activation {hf.get('hidden_act')!r} (supported: silu)")
        if hf.get("pretraining_tp", 1) not in (None, 1):
            raise FamilyError("pretraining_tp > 1 is not supported")
        if arch == "qwen2":
            bias = dict(qkv_bias=True, out_bias=False, mlp_bias=False)
        else:
            attention_bias = hf.get("attention_bias", False)
            bias = dict(qkv_bias=attention_bias, out_bias=attention_bias, mlp_bias=hf.get("mlp_bias", False))
        return ModelConfig(**common, **bias, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
                           activation="silu", tie_embeddings=hf.get("tie_word_embeddings", False))
    except KeyError as e:
        raise FamilyError(f"config.json lacks {e.args[0]!r}, which {HF_CLASSES[arch]} needs") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, FamilyError):
            raise
        raise FamilyError(f"config.json: {e}") from None


def weight_rules(config: ModelConfig, legacy: bool = False) -> list[Rule]:
    """How each of our tensors comes from the checkpoint's. `legacy`: this project's first format
    (GPT-2 names with nn.Linear layout, the tied head not stored)."""
    rules: list[Rule] = []
    if config.arch in ("gpt2", "gpt_bigcode"):
        linear = "copy" if legacy or config.arch == "gpt_bigcode" else "transpose"
        qkv = "heads" if config.arch == "gpt_bigcode" and config.n_kv_head == config.n_head > 1 else linear

        def layer(ours: str, theirs: str, kind: str) -> list[Rule]:
            # A bias is a vector: transposing leaves it as it is, the per-head interleave does not.
            return [Rule(f"{ours}.weight", (f"{theirs}.weight",), kind),
                    Rule(f"{ours}.bias", (f"{theirs}.bias",), "heads" if kind == "heads" else "copy")]

        rules += [Rule("embed.weight", ("transformer.wte.weight",)), Rule("pos_embed.weight", ("transformer.wpe.weight",))]
        for i in range(config.n_layer):
            h = f"transformer.h.{i}"
            rules += (layer(f"layers.{i}.attn_norm", f"{h}.ln_1", "copy") + layer(f"layers.{i}.attn.qkv", f"{h}.attn.c_attn", qkv)
                      + layer(f"layers.{i}.attn.out", f"{h}.attn.c_proj", linear)
                      + layer(f"layers.{i}.mlp_norm", f"{h}.ln_2", "copy") + layer(f"layers.{i}.mlp.up", f"{h}.mlp.c_fc", linear)
                      + layer(f"layers.{i}.mlp.down", f"{h}.mlp.c_proj", linear))
        rules += layer("norm", "transformer.ln_f", "copy")
    else:
        rules.append(Rule("embed.weight", ("model.embed_tokens.weight",)))
        biases = ("weight", "bias")
        norm_params = biases if config.norm == "layernorm" else ("weight",)
        for i in range(config.n_layer):
            layer = f"model.layers.{i}"
            attn = f"{layer}.self_attn"
            rules += [Rule(f"layers.{i}.attn_norm.{p}", (f"{layer}.input_layernorm.{p}",)) for p in norm_params]
            rules += [Rule(f"layers.{i}.mlp_norm.{p}", (f"{layer}.post_attention_layernorm.{p}",)) for p in norm_params]
            for p in ("weight", "bias") if config.qkv_bias else ("weight",):
                rules.append(Rule(f"layers.{i}.attn.qkv.{p}", tuple(f"{attn}.{x}_proj.{p}" for x in "qkv"), "cat"))
            rules += [Rule(f"layers.{i}.attn.out.{p}", (f"{attn}.o_proj.{p}",))
                      for p in (biases if config.out_bias else ("weight",))]
            mlp_params = biases if config.mlp_bias else ("weight",)
            if config.mlp == "swiglu":
                rules += [Rule(f"layers.{i}.mlp.up.{p}", (f"{layer}.mlp.gate_proj.{p}", f"{layer}.mlp.up_proj.{p}"), "cat")
                          for p in mlp_params]
                rules += [Rule(f"layers.{i}.mlp.down.{p}", (f"{layer}.mlp.down_proj.{p}",)) for p in mlp_params]
            else:
                rules += [Rule(f"layers.{i}.mlp.up.{p}", (f"{layer}.mlp.c_fc.{p}",)) for p in mlp_params]
                rules += [Rule(f"layers.{i}.mlp.down.{p}", (f"{layer}.mlp.c_proj.{p}",)) for p in mlp_params]
        rules += [Rule(f"norm.{p}", (f"model.norm.{p}",)) for p in norm_params]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", ("lm_head.weight",)))
    return rules


def iter_ours(config: ModelConfig, tensor: Callable[[str], torch.Tensor], legacy: bool = False
              ) -> Iterator[tuple[str, torch.Tensor]]:
    """Our tensors from a checkpoint's, one at a time, read through `tensor(name)`: a caller that
    keeps only what it makes of each (int8) never holds the whole float model."""
    for rule in weight_rules(config, legacy):
        parts = [tensor(name) for name in rule.theirs]
        if rule.kind == "transpose":
            yield rule.ours, parts[0].t().contiguous()
        elif rule.kind == "cat":
            yield rule.ours, torch.cat(parts, dim=0)
        elif rule.kind == "heads":
            t = parts[0]
            grouped = t.reshape(config.n_head, 3, config.head_dim, *t.shape[1:])
            yield rule.ours, grouped.transpose(0, 1).reshape(t.shape).contiguous()
        else:
            yield rule.ours, parts[0]


def to_ours(config: ModelConfig, tensor: Callable[[str], torch.Tensor], legacy: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict from a checkpoint (see `iter_ours`)."""
    return dict(iter_ours(config, tensor, legacy))


def to_hf(config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors from our state dict (the inverse of `to_ours`)."""
    out = {}
    for rule in weight_rules(config):
        t = state[rule.ours].detach().cpu()
        if rule.kind == "transpose":
            out[rule.theirs[0]] = t.t().contiguous()
        elif rule.kind == "cat":
            sizes = _split_sizes(config, rule)
            for name, part in zip(rule.theirs, t.split(sizes, dim=0)):
                out[name] = part.contiguous()
        elif rule.kind == "heads":
            grouped = t.reshape(3, config.n_head, config.head_dim, *t.shape[1:])
            out[rule.theirs[0]] = grouped.transpose(0, 1).reshape(t.shape).contiguous()
        else:
            out[rule.theirs[0]] = t.contiguous()
    return out


def _split_sizes(config: ModelConfig, rule: Rule) -> list[int]:
    if ".qkv." in rule.ours:
        kv = config.n_kv_head * config.head_dim
        return [config.n_head * config.head_dim, kv, kv]
    return [config.intermediate_size, config.intermediate_size]


def hf_config(config: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict:
    """config.json for a model we trained, in its Hugging Face class's terms (gpt2 and llama)."""
    common = {"architectures": [HF_CLASSES[config.arch]], "model_type": config.arch, "vocab_size": config.vocab_size,
              "bos_token_id": bos_id, "eos_token_id": eos_id, "tie_word_embeddings": config.tie_embeddings,
              "torch_dtype": "float32"}
    activation = {v: k for k, v in reversed(list(ACTIVATION_NAMES.items()))}[config.activation]
    if config.arch == "gpt2":
        # n_ctx beside n_positions: llama.cpp's converter reads the older name
        return {**common, "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
                "n_head": config.n_head, "n_inner": config.intermediate_size, "activation_function": activation,
                "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True}
    if config.arch == "llama":
        return {**common, "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
                "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
                "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim,
                "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps, "hidden_act": "silu",
                "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
                "attention_bias": config.qkv_bias, "mlp_bias": config.mlp_bias}
    raise FamilyError(f"exporting {config.arch!r} models is not supported (train gpt2 or llama)")
