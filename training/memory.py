"""GPU memory a fine-tuning run takes: `python -m training.memory MODEL_DIR | qwen2.5-coder-0.5b | ...`.

Weights, gradients and AdamW state are counted from the parameters: bf16-mixed keeps fp32 master
weights, so 4 + 4 + 8 bytes a parameter, spread over the devices under FSDP, plus the bf16 copies
autocast makes for the forward (the whole model under DDP; one block at a time plus the root's
embedding under FSDP). The activations kept for backward are measured, not guessed: a one- and a
two-block slice of the model runs forward under bf16 autocast on the CPU at two window lengths,
and autograd's saved-tensor hooks count the bytes, so the per-token cost of a block and of the
head + loss fall out of the differences. The loss also holds, for a moment, the bf16 logits and
their fp32 copy (forward) or their gradients (backward): 10 bytes a vocabulary entry a token,
added to what it saves. Activation checkpointing keeps each block's fp32 input instead of its
activations and recomputes one block at a time.

Estimates for planning: allocator slack and the CUDA context come on top (we count 1 GiB).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.families import config_from_hf
from engine.model import ModelConfig, Transformer

GIB = 1024 ** 3
CUDA_CONTEXT = 1 * GIB
# Shapes from the models' published config.json files (no download here).
QWEN = dict(arch="qwen2", vocab_size=151936, block_size=32768, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu",
            activation="silu", position="rope", rope_theta=1e6, qkv_bias=True, out_bias=False, mlp_bias=False,
            tie_embeddings=True)
SHAPES = {
    "qwen2.5-coder-0.5b": dict(QWEN, n_layer=24, n_embd=896, n_head=14, n_kv_head=2, intermediate_size=4864),
    "qwen2.5-coder-1.5b": dict(QWEN, n_layer=28, n_embd=1536, n_head=12, n_kv_head=2, intermediate_size=8960),
}
# (strategy, devices, micro-batch, activation checkpointing)
SCENARIOS = [("ddp", 1, 2, False), ("ddp", 1, 1, False), ("ddp", 1, 2, True), ("ddp", 1, 1, True),
             ("fsdp", 2, 2, True), ("fsdp", 4, 2, True), ("fsdp", 8, 2, False)]


def saved_bytes(config: ModelConfig, n_layer: int, tokens: int) -> int:
    """Bytes autograd keeps for backward in one bf16-autocast forward + loss of `tokens` tokens
    through an `n_layer`-block slice of the model (the bf16 weight copies included)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**config.to_dict(), "n_layer": n_layer, "block_size": tokens}))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, config.vocab_size, (1, tokens))
    with (torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
          torch.autocast("cpu", dtype=torch.bfloat16)):
        logits = model(x)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x.reshape(-1))
    return sum(n for ptr, n in storages.items() if ptr not in params)


def measure(config: ModelConfig, short: int = 128, long: int = 256) -> dict:
    s = {(n, t): saved_bytes(config, n, t) for n in (1, 2) for t in (short, long)}
    block = {t: s[2, t] - s[1, t] for t in (short, long)}
    rest = {t: s[1, t] - block[t] for t in (short, long)}
    return {"block_per_token": (block[long] - block[short]) / (long - short),
            "head_loss_per_token": (rest[long] - rest[short]) / (long - short)}


def parameters(config: ModelConfig) -> tuple[int, int]:
    """(all parameters, the embedding's)."""
    with torch.device("meta"):
        model = Transformer(config)
    return sum(p.numel() for p in model.parameters()), model.embed.weight.numel()


def estimate(config: ModelConfig, measured: dict, strategy: str, devices: int, micro_batch: int, seq_len: int,
             checkpointing: bool) -> dict:
    n_params, n_embed = parameters(config)
    tokens = micro_batch * seq_len
    states = 16 * n_params / (devices if strategy == "fsdp" else 1)
    block_params = (n_params - n_embed) / config.n_layer
    copies = 2 * n_params if strategy != "fsdp" else 2 * (n_embed + 2 * block_params)  # a block and the next one prefetched
    per_block = measured["block_per_token"] * tokens
    blocks = (config.n_layer * 4 * config.n_embd * tokens + per_block) if checkpointing else config.n_layer * per_block
    head = (measured["head_loss_per_token"] + 10 * config.vocab_size) * tokens
    total = states + copies + blocks + head + CUDA_CONTEXT
    return {"strategy": strategy, "devices": devices, "micro_batch": micro_batch, "seq_len": seq_len,
            "activation_checkpointing": checkpointing,
            "gib_per_device": {"weights_grads_adamw": round(states / GIB, 1), "bf16_copies": round(copies / GIB, 1),
                               "block_activations": round(blocks / GIB, 1), "logits_and_loss": round(head / GIB, 1),
                               "total": round(total / GIB, 1)}}


def model_config(name: str) -> ModelConfig:
    if name in SHAPES:
        return ModelConfig(**SHAPES[name])
    return config_from_hf(json.loads((Path(name) / "config.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help=f"model directories or shapes ({', '.join(SHAPES)})")
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args(argv)
    for name in args.models:
        config = model_config(name)
        n_params, n_embed = parameters(config)
        measured = measure(config)
        print(json.dumps({"model": name, "params": n_params, "embedding_params": n_embed,
                          "saved_kib_per_token": {"a_block": round(measured["block_per_token"] / 1024, 1),
                                                  "head_and_loss": round(measured["head_loss_per_token"] / 1024, 1)},
                          "scenarios": [estimate(config, measured, *s[:3], args.seq_len, s[3]) for s in SCENARIOS]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
