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

int4 weights (`quantize --bits 4`, `Engine.load(..., quantize="int4")`): every linear layer's
weight is symmetric int4 in groups of 32 along the input dimension with one float16 scale a group
(scale = the group's largest-magnitude weight / -8 rounded to float16, q = round(w / scale) in -8..7,
as llama.cpp's Q4_0), rows padded with zero weights to a multiple of 128 inputs: 4.5 bits a weight.
Stored as `<name>`: uint8 (out, padded_in / 2), two weights a byte (group g's 16 bytes: byte i =
(q[i] + 8) | (q[i + 16] + 8) << 4), and `<name>.scale`: float16 (out, padded_in / 32). A tied
embedding is the head, so it is stored once in int4 too: the head runs the int4 matmul over it and
the embedding (`Int4Embedding`) dequantizes the rows it looks up; an untied token embedding and
position embeddings stay int8 per row (one row a token is read). `Int4Linear` runs the layers on the
CPU: activations quantized per row to int8 as above, each group's dot exact in int32, the groups'
float sums in the order engine/decode_kernel.c's `int4_linear` adds them (`int4_matmul` is its
PyTorch twin, bit for bit). config.json says `"method": "int4-group32-f16"`; the int8 and float
loaders refuse such a directory, the int4 loader quantizes any other at load. Directories of the
first int4 layout (`"int4-group32"`: float32 scales, the tied head in int8) are refused with one
line that says to quantize the source again.
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
        self.packed: torch.Tensor | None = None

    def pack(self) -> None:
        """Keep a copy of the weights in the compiled kernel's panels for many rows (decode_kernel.c
        `gemm_packed`): (out / 16, in / 4, 16, 4), zero-padded to whole tiles of 64 outputs and to 64 inputs."""
        w = F.pad(self.weight, (0, -self.in_features % 64, 0, -self.out_features % 64))
        self.packed = w.view(w.shape[0] // 16, 16, w.shape[1] // 4, 4).transpose(1, 2).contiguous()

    def native(self) -> kernels.QLinear:
        """This layer as the C kernel's struct (pointers into the buffers: valid while they live)."""
        return kernels.QLinear(self.weight.data_ptr(), self.scale.data_ptr(), self.weight_sum.data_ptr(),
                               kernels.address(self.bias), self.out_features, self.in_features, 0,
                               kernels.address(self.packed))

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


# ---- int4 ----------------------------------------------------------------------------------------
INT4_GROUP = 32
INT4_PAD = 128  # inputs a kernel step takes: 4 groups
INT4_METHOD = "int4-group32-f16"
OLD_INT4_METHOD = "int4-group32"  # the first layout: float32 scales, a tied head in int8; refused
INT4_QUANTIZATION = {
    "method": INT4_METHOD,
    "version": 2,
    "weights": "int4, symmetric, groups of 32 along the input, scale = the group's largest-magnitude weight / -8 "
               "(float16, <name>.scale, (out, padded_in / 32)); two weights a byte, <name>: uint8 (out, padded_in / 2), "
               "group g's 16 bytes: byte i = (q[i] + 8) | (q[i + 16] + 8) << 4; inputs padded with zeros to a multiple of 128",
    "quantized": "linear layers in int4, and a tied token embedding (it is the head) in int4; an untied token "
                 "embedding and position embeddings in int8 per row (int8-per-channel)",
}


def is_int4(model_dir: ModelDir) -> bool:
    q = model_dir.quantization
    return isinstance(q, dict) and q.get("method") == INT4_METHOD


def check_int4_layout(model_dir: ModelDir) -> None:
    """Refuse, in one line, a directory of the first int4 layout."""
    q = model_dir.quantization
    if isinstance(q, dict) and q.get("method") == OLD_INT4_METHOD:
        raise ModelDirError(f"{model_dir.path} holds int4 weights of an older layout ({OLD_INT4_METHOD}: float32 scales, "
                            f"the head in int8): quantize its source again with `code-assistant quantize --bits 4`")


def int4_kept_int8(config) -> tuple[str, ...]:
    """The 2-D weights an int4 model keeps in int8 per row: the embeddings, but a tied token
    embedding, which is the head and int4."""
    return ("pos_embed.weight",) if config.tie_embeddings else ("embed.weight", "pos_embed.weight")


def int4_bytes(n_out: int, n_in: int) -> int:
    """Bytes of one (n_out, n_in) weight in int4: half a byte a weight (inputs padded to a multiple of
    128) and a float16 scale a group of 32."""
    padded = n_in + (-n_in % INT4_PAD)
    return n_out * (padded // 2 + 2 * (padded // INT4_GROUP))


# Weights quantize_int4 takes at a time: its float temporaries of a whole 0.5B-shape embedding
# (151,936 x 896) took the load's peak from 2.1 to 2.7 GB.
_QUANTIZE_CHUNK = 1 << 22


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> packed uint8 (out, padded_in / 2) and float16 scales (out, padded_in / 32)."""
    rows = max(1, _QUANTIZE_CHUNK // max(1, weight.shape[1]))
    parts = [_quantize_int4_rows(w) for w in weight.detach().split(rows)]
    return torch.cat([p for p, _ in parts]), torch.cat([s for _, s in parts])


def _quantize_int4_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.float()
    n, k = w.shape
    w = F.pad(w, (0, -k % INT4_PAD)).view(n, -1, INT4_GROUP)
    extreme = w.gather(-1, w.abs().argmax(dim=-1, keepdim=True))
    scale = (extreme / -8.0).clamp(-65504.0, 65504.0).half()
    # a group too small for a float16 step (|w| < 2.4e-7, or all zero) becomes zeros
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    u = (torch.round(w / scale.float()).clamp(-8, 7) + 8).to(torch.uint8)
    packed = u[..., :16] | (u[..., 16:] << 4)
    return packed.reshape(n, -1).contiguous(), scale.squeeze(-1).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, padded_in / 2) -> the int4 values as int8 (out, groups, 32)."""
    g = packed.view(packed.shape[0], -1, 16)
    return (torch.cat([g & 15, g >> 4], dim=-1).to(torch.int8) - 8)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    w = unpack_int4(packed).float() * scale.float().unsqueeze(-1)
    return w.reshape(packed.shape[0], -1)[:, :in_features]


# Float elements int4_matmul's (groups, rows, out) products may hold at once (64 MB): prefill goes in row chunks.
_INT4_CHUNK = 1 << 24


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The arithmetic of decode_kernel.c's int4_linear in PyTorch, rounding step for rounding step.
    Each group's dot is exact as a float matmul: every partial sum is an integer below 2^24; a float16
    scale is exact in float32, as the kernel widens it."""
    n, groups = scale.shape
    x_scale = (x.abs().amax(dim=1, keepdim=True) / 127.0).clamp_(min=1e-12)
    xq = F.pad(torch.round(x / x_scale).clamp_(-127, 127), (0, groups * INT4_GROUP - x.shape[1]))
    w = unpack_int4(packed).float().permute(1, 2, 0)  # (groups, 32, out)
    per_group = scale.float().t().unsqueeze(1)  # (groups, 1, out)
    rows = max(1, _INT4_CHUNK // (groups * n))
    out = []
    for xc in xq.split(rows):
        products = torch.bmm(xc.view(-1, groups, INT4_GROUP).transpose(0, 1), w).mul_(per_group)
        p = products[0:4].clone()
        for g in range(4, groups, 4):
            p += products[g:g + 4]
        out.append((p[0] + p[1]) + (p[2] + p[3]))
    y = torch.cat(out).mul_(x_scale)
    return y if bias is None else y.add_(bias)


class Int4Linear(nn.Module):
    """int4 weights (groups of 32) times int8 activations (one scale per input row), on the CPU."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int,
                 use_kernels: bool = True):
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], in_features
        self.register_buffer("weight", packed.contiguous())
        self.register_buffer("scale", scale.half().contiguous())
        # the kernel's layout: (out / 4, groups, 4), out padded with zero scales to a multiple of 4
        tiled = F.pad(self.scale, (0, 0, 0, -self.out_features % 4)).view(-1, 4, scale.shape[1]).transpose(1, 2)
        self.register_buffer("scale_tiled", tiled.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.kernel = kernels.decode_kernel() if use_kernels else None

    def native(self) -> kernels.QLinear:
        """This layer as the C kernel's struct (pointers into the buffers: valid while they live)."""
        return kernels.QLinear(self.weight.data_ptr(), self.scale_tiled.data_ptr(), None, kernels.address(self.bias),
                               self.out_features, self.in_features, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        # The kernel at every row count: prefill too (200 rows of the 0.5B shape's MLP: 20 ms against
        # int4_matmul's 317 ms, one thread, measured; the same floats).
        if self.kernel is not None:
            y = torch.empty(rows.shape[0], self.out_features)
            self.kernel.int4_linear(rows.data_ptr(), rows.shape[0], self.native(), y.data_ptr(), kernels.threads())
        else:
            y = int4_matmul(rows, self.weight, self.scale, self.bias)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


class Int4Embedding(nn.Module):
    """Row lookup in a tied head's int4 weights (`Int4Linear`'s buffers, shared): each row looked up
    is dequantized as `dequantize_int4` does (decode_kernel.c's `embed_int4_row` the same)."""

    def __init__(self, head: Int4Linear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("weight", head.weight)
        self.register_buffer("scale", head.scale)
        self.embedding_dim, self.dtype = head.in_features, dtype

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        rows = unpack_int4(self.weight[flat]).float() * self.scale[flat].float().unsqueeze(-1)
        return rows.reshape(*idx.shape, -1)[..., :self.embedding_dim].to(self.dtype)


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
    if is_int4(model_dir):
        raise ModelDirError(f"{model_dir.path} holds int4 weights: load it with quantize='int4'")
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


def int4_state(model_dir: ModelDir) -> dict[str, torch.Tensor]:
    """The int4 state of any model directory: read as it is (int4), or quantized one tensor at a
    time (float; int8 weights are dequantized, then requantized)."""
    check_int4_layout(model_dir)
    if is_int4(model_dir):
        return _read_int4_state(model_dir)
    if model_dir.quantization and model_dir.quantization.get("method") != QUANTIZATION["method"]:
        raise ModelDirError(f"{model_dir.path}: unknown quantization {model_dir.quantization.get('method')!r}")
    kept_int8 = int4_kept_int8(model_dir.config)
    pending: dict[str, torch.Tensor] = {}

    def in_int4(name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and name.endswith(".weight") and name not in kept_int8

    def as_read(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if name.endswith(SCALE_SUFFIX):  # an int8 weight's scale: the weight came just before
            base = name[:-len(SCALE_SUFFIX)]
            q = pending.pop(base)
            if in_int4(base, q):
                return dict(zip((base, name), quantize_int4(q.float() * tensor.float().unsqueeze(-1))))
            return {base: q, name: _own(tensor)}
        if tensor.dtype == torch.int8:
            pending[name] = _own(tensor)
            return {}
        if in_int4(name, tensor) and tensor.is_floating_point():
            return dict(zip((name, name + SCALE_SUFFIX), quantize_int4(tensor)))
        return _quantize_as_read(name, tensor)

    state = load_state(model_dir, transform=as_read)
    if pending:
        raise ModelDirError(f"{model_dir.path}: int8 tensor {next(iter(pending))!r} has no {SCALE_SUFFIX}")
    return state


def _read_int4_state(model_dir: ModelDir) -> dict[str, torch.Tensor]:
    """An int4 directory's tensors, each checked against the shape config.json implies."""
    from safetensors import SafetensorError, safe_open

    from .model_dir import WEIGHTS_FILE, expected_shapes

    try:
        with safe_open(str(model_dir.path / WEIGHTS_FILE), framework="pt") as f:
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError) as e:
        raise ModelDirError(f"{model_dir.path / WEIGHTS_FILE}: {e}") from e
    kept_int8 = int4_kept_int8(model_dir.config)
    state = {}
    for name, shape in expected_shapes(model_dir.config).items():
        t = stored.get(name)
        if t is None:
            raise ModelDirError(f"{model_dir.path}: the weights have no tensor for {name!r}")
        if len(shape) == 2 and name not in kept_int8:
            padded = shape[1] + (-shape[1] % INT4_PAD)
            want = {name: ((shape[0], padded // 2), torch.uint8), name + SCALE_SUFFIX: ((shape[0], padded // INT4_GROUP), torch.float16)}
        elif len(shape) == 2:
            want = {name: (shape, torch.int8), name + SCALE_SUFFIX: ((shape[0],), torch.float32)}
        else:
            want = {name: (shape, t.dtype if t.is_floating_point() else torch.float32)}
        for key, (want_shape, dtype) in want.items():
            got = stored.get(key)
            if got is None or tuple(got.shape) != tuple(want_shape) or got.dtype != dtype:
                found = "nothing" if got is None else f"{got.dtype} {tuple(got.shape)}"
                raise ModelDirError(f"{model_dir.path}: int4 tensor {key} should be {dtype} {tuple(want_shape)}, found {found}")
            state[key] = got.float() if dtype.is_floating_point and dtype != torch.float16 else got
    return state


def load_int4_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    use_kernels: bool = True) -> tuple[Transformer, ModelDir]:
    """The model of any directory (float, int8 or int4) running on int4 linear layers (CPU only)."""
    if torch.device(device).type != "cpu":
        raise ModelDirError(f"int4 weights run on the CPU only, not {device}")
    model_dir = read_model_dir(path)
    state = int4_state(model_dir)
    quantized = {n[:-len(SCALE_SUFFIX)] for n in state if n.endswith(SCALE_SUFFIX)}
    floats = {n: t.to(dtype) for n, t in state.items() if n not in quantized and not n.endswith(SCALE_SUFFIX)}
    model = build_model(model_dir.config, floats)

    def linear(name: str, bias: torch.Tensor | None) -> Int4Linear:
        weight = "embed.weight" if name == "head" and model.config.tie_embeddings else name + ".weight"
        return Int4Linear(state[weight], state[weight + SCALE_SUFFIX], bias, _in_features(model, name), use_kernels)

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                setattr(module, child_name, linear(full, state.get(full + ".bias")))
    if model.config.tie_embeddings:
        model.embed = Int4Embedding(model.head, dtype)
    else:
        model.embed = Int8Embedding(state["embed.weight"], state["embed.weight" + SCALE_SUFFIX], dtype)
    if model.pos_embed is not None:
        model.pos_embed = Int8Embedding(state["pos_embed.weight"], state["pos_embed.weight" + SCALE_SUFFIX], dtype)
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ModelDirError(f"{model_dir.path}: no int4 kernel for {left[0]}")
    del state, floats
    _return_freed_memory()
    return model.eval(), model_dir


def _in_features(model: Transformer, name: str) -> int:
    return model.get_submodule(name).in_features


def write_int4_model_dir(src: str | Path, out: str | Path) -> Path:
    model_dir = read_model_dir(src)
    if is_int4(model_dir):
        raise ModelDirError(f"{src} is already int4")
    load_tokenizer_from_dir(model_dir)  # copied as it is: check now that the copy will load
    out = save_int8_dir(out, model_dir, int4_state(model_dir), INT4_QUANTIZATION)
    (out / "MODEL_CARD.md").write_text(quantized_model_card(model_dir, out, 4))
    return out


def quantized_model_card(source: ModelDir, out: Path, bits: int) -> str:
    """MODEL_CARD.md of a directory `code-assistant quantize` wrote: what was done, and how to measure its cost."""
    scheme = INT4_QUANTIZATION if bits == 4 else QUANTIZATION
    before = sum(f.stat().st_size for f in source.path.glob("*.safetensors"))
    after = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    weights = "int8" if source.int8 else "float"
    runs = ('`Engine.load(dir, quantize="int4")`, `code-assistant serve --model DIR --quantize int4` (CPU only; the '
            "compiled decode step where it builds)" if bits == 4 else
            "`Engine.load(dir)`, `code-assistant serve --model DIR` (the int8 linear layers and the compiled decode "
            "step on the CPU; dequantized to float elsewhere)")
    measured = ("the shipped 3.35 M model (44,817 tokens, a tied head), bits per byte 1.3842 int8, 1.3951 int4 (+0.79 %; "
                "1.3881 with its head left in int8); a briefly trained 1.05 M Llama (untied, "
                "models/default/MODEL_CARD.md), 2.1695 int8, 2.1693 int4 (-0.01 %)" if bits == 4 else
                "the shipped 3.35 M model (44,817 tokens), bits per byte 1.3841 fp32, 1.3842 int8; a briefly "
                "trained 1.05 M Llama (models/default/MODEL_CARD.md), 2.1695 fp32, 2.1695 int8")
    return (f"# {source.name}, int{bits} (`code-assistant quantize --bits {bits}`)\n\n"
            f"Quantized from `{source.path}` ({weights} weights, {before / 1e6:.1f} MB) "
            f"to {after / 1e6:.1f} MB of safetensors.\n\n"
            f"- weights: {scheme['weights']}\n- quantized: {scheme['quantized']}\n- runs: {runs}\n\n"
            f"Quality cost: measure it on your code with `code-assistant eval --model DIR --src FOLDER --weights "
            f"int{bits}` beside `--weights {'int8' if bits == 4 else 'float'}` on the source. Measured on "
            f"tests/data/heldout: {measured}.\n")


def write_int8_model_dir(src: str | Path, out: str | Path) -> Path:
    model_dir = read_model_dir(src)
    if model_dir.int8:
        raise ModelDirError(f"{src} is already int8")
    load_tokenizer_from_dir(model_dir)  # copied as it is: check now that the copy will load
    state = load_state(model_dir, transform=_quantize_as_read)
    out = save_int8_dir(out, model_dir, state, QUANTIZATION)
    (out / "MODEL_CARD.md").write_text(quantized_model_card(model_dir, out, 8))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="code-assistant quantize",
                                     description="write an int8 (per-channel scales) or int4 (groups of 32) copy "
                                                 "of a model directory")
    parser.add_argument("--model", required=True, help="model directory (Hugging Face or this project's)")
    parser.add_argument("--out", required=True, help="directory to write the quantized model into")
    parser.add_argument("--bits", type=int, choices=[8, 4], default=8,
                        help="8: int8, one scale per output row; 4: int4, one scale per 32 inputs (from a float "
                             "or an int8 directory)")
    args = parser.parse_args(argv)
    if Path(args.out).resolve() == Path(args.model).resolve():
        print("code-assistant quantize: --out must differ from --model", file=sys.stderr)
        return 2
    try:
        (write_int4_model_dir if args.bits == 4 else write_int8_model_dir)(args.model, args.out)
    except ModelDirError as e:
        print(f"code-assistant quantize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
