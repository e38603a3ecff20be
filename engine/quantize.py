"""int8 weights: our checkpoint format, and the module swap that runs it.

Two phases, as in gpt-fast: `quantize_tensor` turns each float weight into our stored format
(every 2-D weight as int8 plus one float32 scale per output row, `<name>.scale`; biases and
norms stay float), applied one tensor at a time as a checkpoint is read, and `swap_in_int8`
replaces the model's modules with int8 ones built from those stored integers. The kernel is
chosen at load, so it can change without a new checkpoint:

- CPU: `Int8Linear`: each input row is quantized to int8 with its own scale and multiplied with
  the int8 weights exactly in int32 (engine/decode_kernel.c where it builds, AVX-512 VNNI here;
  else `torch._int_mm`, the same integers and rounding bit for bit). One scale per row keeps a
  sequence's result independent of the others in its batch (FBGEMM's dynamic linear, used before,
  quantized the whole batch with one range, in 7 bits).
- CUDA: weight-only int8 (`WeightOnlyInt8Linear`): int8 weights in memory, dequantized into the
  matmul in the activation dtype.

The embedding is quantized per row too; a tied head is a linear layer over the same stored integers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .model import Transformer
from .model_dir import (SCALE_SUFFIX, ModelDir, ModelDirError, build_model, load_state, load_tokenizer_from_dir,
                        read_model_dir, save_int8_dir)


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


# From ~32 rows on (prefill), oneDNN's int8 GEMM behind torch._int_mm is faster than the kernel's
# (3.5x at 128 rows, measured); the two give the same integers, so the result is the same.
KERNEL_MAX_ROWS = 32


class Int8Linear(nn.Module):
    """int8 weights (per-row scales) times int8 activations (one scale per input row), on the CPU."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 use_kernels: bool = True):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight", weight_int8.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        # VNNI multiplies unsigned activations (xq + 128) by signed weights; 128 * this undoes it.
        self.register_buffer("weight_sum", weight_int8.sum(dim=1, dtype=torch.int32))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.kernel = kernels.decode_kernel() if use_kernels else None

    def native(self) -> kernels.QLinear:
        """This layer as the C kernel's struct (pointers into the buffers: valid while they live)."""
        return kernels.QLinear(self.weight.data_ptr(), self.scale.data_ptr(), self.weight_sum.data_ptr(),
                               kernels.address(self.bias), self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        if self.kernel is not None and rows.shape[0] < KERNEL_MAX_ROWS:
            y = torch.empty(rows.shape[0], self.out_features)
            self.kernel.int8_linear(rows.data_ptr(), rows.shape[0], self.native(), y.data_ptr(),
                                    kernels.threads())
        else:
            y = int8_matmul(rows, self.weight, self.scale, self.bias)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The arithmetic of decode_kernel.c's int8_linear in PyTorch, rounding step for rounding step."""
    x_scale = (x.abs().amax(dim=1, keepdim=True) / 127.0).clamp_(min=1e-12)
    xq = torch.round(x / x_scale).clamp_(-127, 127).to(torch.int8)
    y = torch._int_mm(xq, weight.t()).float().mul_(x_scale).mul_(scale)
    return y if bias is None else y.add_(bias)


def swap_in_int8(model: Transformer, int8_state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, use_kernels: bool = True) -> Transformer:
    """Replace every linear layer and the embeddings with int8 modules built from the stored integers
    (a tied head runs on the embedding's integers). `use_kernels=False` keeps the CPU on PyTorch."""
    cpu = torch.device(device).type == "cpu"

    def linear(weight_name: str, bias: torch.Tensor | None) -> nn.Module:
        q, scale = int8_state[weight_name], int8_state[weight_name + SCALE_SUFFIX]
        if cpu:
            return Int8Linear(q, scale, bias, use_kernels)
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


def load_int8_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    use_kernels: bool = True) -> tuple[Transformer, ModelDir]:
    """The model of a directory (float or int8) running on int8 weights. Float weights are
    quantized one tensor at a time as they are read."""
    model_dir = read_model_dir(path)
    state = load_state(model_dir, transform=(lambda n, t: {n: _own(t)}) if model_dir.int8 else _quantize_as_read)
    quantized = {n[:-len(SCALE_SUFFIX)] for n in state if n.endswith(SCALE_SUFFIX)}
    floats = {n: t.to(dtype) for n, t in state.items() if n not in quantized and not n.endswith(SCALE_SUFFIX)}
    model = build_model(model_dir.config, floats)
    model = swap_in_int8(model, state, device, dtype, use_kernels).to(device)
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
