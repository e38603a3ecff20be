"""int8 weights: our checkpoint format, and the module swap that runs it.

Two phases, as in gpt-fast: `quantize_tensor` turns each float weight into our stored format
(every 2-D weight as int8 plus one float32 scale per output row, `<name>.scale`; biases and
norms stay float), applied one tensor at a time as a checkpoint is read, and `swap_in_int8` replaces the model's modules with int8 ones built from
those stored integers. The kernel is chosen at load, so it can change without a new checkpoint:

- CPU: FBGEMM dynamic int8 linear (`torch.ao.nn.quantized.dynamic.Linear`), built from our int8
  values and scales. Measured in docs/engine.md; `torch._weight_int8pack_mm` was 10-50x slower on
  this CPU, so it is not used.
- CUDA: weight-only int8 (`WeightOnlyInt8Linear`): int8 weights in memory, dequantized into the
  matmul in the activation dtype.

The embedding is quantized per row too; a tied head is a linear layer over the same stored integers.
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

from .model import Transformer
from .model_dir import (SCALE_SUFFIX, ModelDir, ModelDirError, build_model, load_state, load_tokenizer_from_dir,
                        read_model_dir, save_int8_dir)

log = logging.getLogger("engine.quantize")

QUANTIZATION = {
    "method": "int8-per-channel",
    "version": 1,
    "weights": "int8, symmetric, scale = absmax of the output row / 127 (float32, stored as <name>.scale)",
    "quantized": "every 2-D weight: linear layers, token and position embeddings",
}


def quantize_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> int8 weight and one float32 scale per output row."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


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


def swap_in_int8(model: Transformer, int8_state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Transformer:
    """Replace every linear layer and the embeddings with int8 modules built from the stored integers
    (a tied head runs on the embedding's integers)."""
    cpu = torch.device(device).type == "cpu"

    def linear(weight_name: str, bias: torch.Tensor | None) -> nn.Module:
        q, scale = int8_state[weight_name], int8_state[weight_name + SCALE_SUFFIX]
        if cpu:
            try:
                return fbgemm_linear(q, scale, bias)
            except (RuntimeError, AttributeError):  # no FBGEMM/x86 backend here (ARM), or a torch without it
                log.warning("FBGEMM int8 linear unavailable; using weight-only int8", exc_info=True)
        return WeightOnlyInt8Linear(q, scale, bias).to(device)

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and full != "head":
                bias = int8_state.get(full + ".bias")
                setattr(module, child_name, linear(full + ".weight", bias))
    model.head = linear("embed.weight" if model.config.tie_embeddings else "head.weight", None)
    model.embed = Int8Embedding(int8_state["embed.weight"], int8_state["embed.weight" + SCALE_SUFFIX], dtype).to(device)
    if model.pos_embed is not None:
        key = "pos_embed.weight"
        model.pos_embed = Int8Embedding(int8_state[key], int8_state[key + SCALE_SUFFIX], dtype).to(device)
    return model


def _quantize_as_read(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if tensor.dim() == 2 and tensor.is_floating_point():
        q, scale = quantize_tensor(tensor)
        return {name: q, name + SCALE_SUFFIX: scale}
    return {name: _own(tensor.float() if tensor.is_floating_point() else tensor)}


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a tensor safetensors may have mapped from the file: kept, the whole file's mapping
    stays resident (a 0.5 B-parameter int8 model held 2.6 GB instead of 0.7 GB)."""
    return tensor.clone()


def load_int8_model(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[Transformer, ModelDir]:
    """The model of a directory (float or int8) running on int8 weights. Float weights are
    quantized one tensor at a time as they are read."""
    model_dir = read_model_dir(path)
    state = load_state(model_dir, transform=(lambda n, t: {n: _own(t)}) if model_dir.int8 else _quantize_as_read)
    quantized = {n[:-len(SCALE_SUFFIX)] for n in state if n.endswith(SCALE_SUFFIX)}
    floats = {n: t.to(dtype) for n, t in state.items() if n not in quantized and not n.endswith(SCALE_SUFFIX)}
    model = build_model(model_dir.config, floats)
    model = swap_in_int8(model, state, device, dtype).to(device)
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ModelDirError(f"{model_dir.path}: no int8 kernel for {left[0]}")
    del state, floats
    _return_freed_memory()
    return model.eval(), model_dir


def _return_freed_memory() -> None:
    """Hand the float tensors' freed heap back to the OS: glibc keeps it otherwise (measured on a
    0.5 B-parameter model: 1.5 GB resident after loading, 0.97 GB after this)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def write_int8_model_dir(src: str | Path, out: str | Path) -> Path:
    model_dir = read_model_dir(src)
    if model_dir.int8:
        raise ModelDirError(f"{src} is already int8")
    load_tokenizer_from_dir(model_dir)  # copied as it is: check now that the copy will load
    state = load_state(model_dir, transform=_quantize_as_read)
    return save_int8_dir(out, model_dir, state, QUANTIZATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant quantize",
                                     description="write an int8 copy (per-channel scales) of a model directory")
    parser.add_argument("--model", required=True, help="model directory (Hugging Face or this project's)")
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
