"""int8 weights: our checkpoint format, and the module swap that runs it.

Two phases, as in gpt-fast: `quantize_tensors` turns an fp32 state dict into our stored format
(every 2-D weight as int8 plus one float32 scale per output row, `<name>.scale`; biases and
LayerNorms stay fp32), and `swap_in_int8` replaces the model's modules with int8 ones built from
those stored integers. The kernel is chosen at load, so it can change without a new checkpoint:

- CPU: FBGEMM dynamic int8 linear (`torch.ao.nn.quantized.dynamic.Linear`), built from our int8
  values and scales. Measured in docs/engine.md; `torch._weight_int8pack_mm` was 10-50x slower on
  this CPU, so it is not used.
- CUDA: weight-only int8 (`WeightOnlyInt8Linear`): int8 weights in memory, dequantized into the
  matmul in the activation dtype.

The tied embedding is quantized per row too; the int8 model's lm_head is a linear layer over the
same stored integers.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT
from .model_dir import (SCALE_SUFFIX, TOKENIZER_FILE, ModelDirError, build_model, dequantize, load_tensors,
                        read_config, save_model_dir)

log = logging.getLogger("engine.quantize")

QUANTIZATION = {
    "method": "int8-per-channel",
    "version": 1,
    "weights": "int8, symmetric, scale = absmax of the output row / 127 (float32, stored as <name>.scale)",
    "quantized": "every 2-D weight: linear layers, token and position embeddings",
}


def is_int8_config(config: dict) -> bool:
    quant = (config.get("weights") or {}).get("quantization") or {}
    return quant.get("method") == QUANTIZATION["method"]


def quantize_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> int8 weight and one float32 scale per output row."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if t.dim() == 2 and t.is_floating_point():
            out[name], out[name + SCALE_SUFFIX] = quantize_tensor(t)
        else:
            out[name] = t.detach().float().contiguous()
    return out


class WeightOnlyInt8Linear(nn.Module):
    """int8 weights in memory, dequantized into the matmul (the CUDA path; also runs on CPU)."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight", weight_int8)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int8Embedding(nn.Module):
    """Row lookup in an int8 table with per-row scales."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("weight", weight_int8)
        self.register_buffer("scale", scale.float())
        self.dtype = dtype

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].to(self.dtype) * self.scale[idx].unsqueeze(-1).to(self.dtype)


def fbgemm_linear(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """FBGEMM's dynamic int8 linear over our stored integers (activations quantized per call)."""
    out_features, in_features = weight_int8.shape
    with warnings.catch_warnings():  # quantized-tensor constructors warn that they are deprecated
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            weight_int8.cpu(), scale.double().cpu(), torch.zeros(out_features, dtype=torch.long), 0)
        module = torch.ao.nn.quantized.dynamic.Linear(in_features, out_features, bias_=bias is not None,
                                                      dtype=torch.qint8)
        module.set_weight_bias(qweight, None if bias is None else bias.detach().float().cpu())
    return module


def swap_in_int8(model: GPT, int8_tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> GPT:
    """Replace every linear layer and the embeddings with int8 modules built from the stored integers."""
    cpu = torch.device(device).type == "cpu"

    def linear(module: nn.Linear, weight_name: str) -> nn.Module:
        q, scale = int8_tensors[weight_name], int8_tensors[weight_name + SCALE_SUFFIX]
        if cpu:
            try:
                return fbgemm_linear(q, scale, module.bias)
            except (RuntimeError, AttributeError):  # no FBGEMM/x86 backend here (ARM), or a torch without it
                log.warning("FBGEMM int8 linear unavailable; using weight-only int8", exc_info=True)
        return WeightOnlyInt8Linear(q, scale, module.bias).to(device)

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and full != "lm_head":
                setattr(module, child_name, linear(child, full + ".weight"))
    wte = "transformer.wte.weight"
    model.lm_head = linear(model.lm_head, wte)
    for emb in ("wte", "wpe"):
        key = f"transformer.{emb}.weight"
        model.transformer[emb] = Int8Embedding(int8_tensors[key], int8_tensors[key + SCALE_SUFFIX], dtype).to(device)
    return model


def load_int8_model(model_dir: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> GPT:
    """The model of a directory (fp32 or int8) running on int8 weights."""
    config = read_config(model_dir)
    tensors = load_tensors(model_dir)
    if not is_int8_config(config):
        tensors = quantize_tensors(tensors)
    model = build_model(config, dequantize(tensors), model_dir).to(device=device, dtype=dtype)
    return swap_in_int8(model, tensors, device, dtype).eval()


def write_int8_model_dir(src: str | Path, out: str | Path) -> Path:
    src, out = Path(src), Path(out)
    config = read_config(src)
    if is_int8_config(config):
        raise ModelDirError(f"{src} is already int8")
    tensors = load_tensors(src)
    model = build_model(config, tensors, src)  # checks the weights match the config
    return save_model_dir(out, model, src / TOKENIZER_FILE, config.get("tokenizer", {}),
                          training=config.get("training"), tensors=quantize_tensors(tensors),
                          quantization=QUANTIZATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant quantize",
                                     description="write an int8 copy (per-channel scales) of a model directory")
    parser.add_argument("--model", required=True, help="fp32 model directory")
    parser.add_argument("--out", required=True, help="directory to write the int8 model into")
    args = parser.parse_args(argv)
    if Path(args.out).resolve() == Path(args.model).resolve():
        print("code-assistant quantize: --out must differ from --model", file=sys.stderr)
        return 2
    try:
        write_int8_model_dir(args.model, args.out)
    except ModelDirError as e:
        print(f"code-assistant quantize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
