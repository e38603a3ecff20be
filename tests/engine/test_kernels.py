"""Every CPU level a wheel carries (engine/kernels.py VARIANTS): it builds, and on a CPU that can run
it, its int8 and int4 products equal their PyTorch twins bit for bit. The engine's own tests run
the level this machine loads; a wheel installed on an older CPU loads a lower one."""
from __future__ import annotations

import ctypes

import pytest
import torch

from engine import kernels
from engine.quantize import Int4Linear, Int8Linear, int4_matmul, int8_matmul, quantize_int4, quantize_tensor


def test_every_cpu_level_builds_and_multiplies_as_pytorch_does(tmp_path):
    if kernels.find_compiler() is None:
        pytest.skip("no C compiler here: the prebuilt levels cannot be built")
    assert kernels.build_prebuilt(tmp_path) == []
    torch.manual_seed(0)
    ran = []
    for variant, _, needs in kernels.variants():
        if not needs <= kernels.cpu_flags():
            continue  # this CPU cannot run that level
        lib = kernels.declare(ctypes.CDLL(str(tmp_path / f"decode_kernel-{variant}.so")))
        for rows, inputs, outputs in [(1, 192, 70), (7, 200, 64), (40, 768, 192)]:  # tiles, packed panels
            weight, x, bias = torch.randn(outputs, inputs), torch.randn(rows, inputs), torch.randn(outputs)
            y = torch.empty(rows, outputs)
            int8 = Int8Linear(*quantize_tensor(weight), bias, use_kernels=False)
            int8.pack()
            lib.int8_linear(x.data_ptr(), rows, int8.native(), y.data_ptr(), 2)
            assert torch.equal(y, int8_matmul(x, int8.weight, int8.scale, int8.bias)), (variant, rows, inputs)
            int4 = Int4Linear(*quantize_int4(weight), bias, inputs, use_kernels=False)
            lib.int4_linear(x.data_ptr(), rows, int4.native(), y.data_ptr(), 2)
            assert torch.equal(y, int4_matmul(x, int4.weight, int4.scale, int4.bias)), (variant, rows, inputs)
        lib.pool_rest()
        ran.append(variant)
    assert ran, "no CPU level runs on this CPU"
