"""The compiled int8 kernels against their PyTorch twins: the matmul bit for bit, the one-call
decode step against the model's forward, and whole engines token for token with and without them."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.hf_models import FAMILIES, TINY, save_random_model
from engine import CompletionInput, Engine, EngineConfig, SamplingParams
from engine import kernels
from engine.fast_decode import FastDecoder
from engine.kv_cache import block_pool_layout
from engine.kv_cache import KVCache
from engine.quantize import Int8Linear, load_int8_model, quantize_tensor

ROOT = Path(__file__).resolve().parents[2]


def require_kernel():
    if kernels.decode_kernel() is None:
        pytest.skip("engine/decode_kernel.c did not build here (see the logged reason); the PyTorch path is "
                    "what runs, and the tests that compare the two cannot")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tiny_model_dir):
    """GPT-2 (our export), Qwen2 (GQA, RoPE, SwiGLU, RMSNorm, tied head) and StarCoder2 (sliding
    window, LayerNorm with RoPE, biases)."""
    out = {"gpt2": tiny_model_dir}
    for name in ("qwen2", "starcoder2"):
        out[name] = save_random_model(tmp_path_factory.mktemp(name) / name, FAMILIES[name], TINY)
    return out


@pytest.mark.parametrize("shape", [(1, 64, 128, True), (3, 100, 37, False), (7, 192, 576, True), (20, 260, 70, True)])
def test_int8_matmul_kernel_equals_pytorch_bit_for_bit(shape):
    require_kernel()
    M, K, N, bias = shape
    torch.manual_seed(0)
    q, scale = quantize_tensor(torch.randn(N, K) * 0.05)
    b = torch.randn(N) if bias else None
    x = torch.randn(M, K) * 3
    assert torch.equal(Int8Linear(q, scale, b)(x), Int8Linear(q, scale, b, use_kernels=False)(x))


@pytest.mark.parametrize("shape", [(8, 192, 576, True), (13, 70, 37, False), (31, 260, 70, True), (64, 64, 33, False)])
def test_packed_panels_give_the_kernel_the_same_result_bit_for_bit(shape):
    """Many rows run over the weights packed in panels (decode_kernel.c gemm_packed) where the CPU
    has VNNI: the same integers as the 4x4 tiles and the PyTorch twin, so the same floats."""
    require_kernel()
    M, K, N, bias = shape
    torch.manual_seed(2)
    q, scale = quantize_tensor(torch.randn(N, K) * 0.05)
    b = torch.randn(N) if bias else None
    x = torch.randn(M, K) * 3
    packed = Int8Linear(q, scale, b)
    packed.pack()
    y = torch.empty(M, N)
    packed.kernel.int8_linear(x.data_ptr(), M, packed.native(), y.data_ptr(), 1)
    tiles = Int8Linear(q, scale, b)
    y_tiles = torch.empty(M, N)
    tiles.kernel.int8_linear(x.data_ptr(), M, tiles.native(), y_tiles.data_ptr(), 1)
    assert torch.equal(y, y_tiles)
    assert torch.equal(y, Int8Linear(q, scale, b, use_kernels=False)(x))


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernel", "pytorch"])
def test_a_row_gets_the_same_result_alone_or_in_a_batch(use_kernels):
    """One activation scale per row: what a sequence gets never depends on its batch neighbours."""
    torch.manual_seed(1)
    q, scale = quantize_tensor(torch.randn(40, 96) * 0.05)
    layer = Int8Linear(q, scale, None, use_kernels)
    x = torch.randn(5, 96)
    x[3] *= 100  # a row with a much larger range must not coarsen the others
    assert torch.equal(layer(x)[1], layer(x[1:2])[0])


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "starcoder2"])
@pytest.mark.parametrize("kv_int8", [False, True], ids=["kv-fp32", "kv-int8"])
def test_decode_step_equals_the_model_forward(hf_dirs, family, kv_int8):
    """Prefill in PyTorch, then decode steps (one row, then two rows of three tokens, one padded)
    through the kernel and through the model, each on its own copy of a paged pool whose blocks are
    scattered: the same logits."""
    require_kernel()
    torch.set_grad_enabled(False)
    model, _ = load_int8_model(hf_dirs[family])
    c = model.config
    fast = FastDecoder.build(model, torch.device("cpu"))
    assert fast is not None
    bt, n_blocks = 8, 24
    caches = [KVCache(c.n_layer, n_blocks, bt, c.n_kv_head, c.head_dim, int8=kv_int8, kernel=False) for _ in range(2)]
    order = random.Random(0).sample(range(1, n_blocks), n_blocks - 1)
    tables = [order[:8], order[8:16]]
    window = c.sliding_window or None
    prompt = [(7 * i) % 200 + 3 for i in range(40)]  # past StarCoder2's 24-token window
    pos = torch.arange(len(prompt)).unsqueeze(0)
    for table in tables:
        for cache in caches:
            model(torch.tensor([prompt]), pos, cache.batch([table], pos, window=window), last_only=True)
    # int8 keys: a value a rounding step apart on either side is expected, so compare loosely there
    tol = 2e-2 if kv_int8 else 1e-4
    layout = block_pool_layout(caches[1].k, caches[1].v, caches[1].k_scale, caches[1].v_scale)
    token = 11
    for step in range(6):  # across a block boundary (position 40)
        p = torch.tensor([[len(prompt) + step]])
        ref = model(torch.tensor([[token]]), p, caches[0].batch([tables[1]], p, window=window))[0, -1]
        got = fast.forward([[token]], p.tolist(), layout, [tables[1]])[0, -1]
        assert (got - ref).abs().max() <= tol * ref.abs().max(), step
        token = int(ref.argmax())
    idx, positions, n_real = [[1, 2, 3], [4, 5, 5]], [[50, 51, 52], [46, 47, 47]], [3, 2]
    ref = model(torch.tensor(idx), torch.tensor(positions), caches[0].batch(tables, torch.tensor(positions), n_real, window))
    got = fast.forward(idx, positions, layout, tables, n_real)
    for b, n in enumerate(n_real):  # padding positions are not compared
        assert (got[b, :n] - ref[b, :n]).abs().max() <= tol * ref[b, :n].abs().max()


def run_requests(engine: Engine, prompts: list[str], params: SamplingParams) -> list[str]:
    """Every prompt at once (continuous batching), then each again with more text (prefix reuse)."""
    import threading

    out: dict[int, str] = {}
    done = threading.Semaphore(0)
    for round_ in (0, 1):
        texts = [p if round_ == 0 else p + "    x = 1\n" for p in prompts]
        parts: dict[int, list[str]] = {i: [] for i in range(len(texts))}

        def on_chunk(i):
            def call(chunk):
                parts[i].append(chunk.text)
                if chunk.finish_reason:
                    done.release()
            return call

        for i, text in enumerate(texts):
            engine.submit(CompletionInput(text, None, params=params), on_chunk(i))
        for _ in texts:
            assert done.acquire(timeout=60)
        out.update({round_ * 100 + i: "".join(p) for i, p in parts.items()})
    return [out[k] for k in sorted(out)]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_engine_greedy_text_is_the_same_with_and_without_kernels(hf_dirs, family):
    """Token for token, with every engine feature on: continuous batching, prefix reuse (the
    second round), token healing and the context cache model (the defaults). Keys and values in
    fp32 on both paths: with kernels the default is int8, without fp32, and int8 keys dequantised
    in C and in PyTorch round apart (compared within a tolerance above)."""
    require_kernel()
    prompts = ["def add(a, b):\n    ret", "import json\n\nclass Decoder:\n", "for i in range(10):\n    print(",
               "    return self.", "from email import utils\n\n\ndef parse(s):\n"]
    params = SamplingParams(max_tokens=24)
    texts = []
    for use_kernels in (True, False):
        engine = Engine.load(hf_dirs[family], quantize="int8", config=EngineConfig(max_batch=3, kernels=use_kernels, kv_int8=False))
        try:
            assert engine.decode_path["kernels"] == ("c" if use_kernels else "pytorch")
            texts.append(run_requests(engine, prompts, params))
        finally:
            engine.close()
    assert texts[0] == texts[1]
    assert any(texts[0])


def test_without_a_compiler_the_build_says_why(tmp_path):
    path, reason = kernels.build(ROOT / "engine" / "decode_kernel.c", compiler=str(tmp_path / "no-such-cc"))
    assert path is None and "no C compiler" in reason


def test_engine_runs_in_pytorch_when_kernels_are_off(tiny_model_dir):
    """CODE_ASSISTANT_NO_KERNELS (as where no compiler exists): the engine loads, says why, and completes."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from engine import Engine, SamplingParams\n"
            f"e = Engine.load({str(tiny_model_dir)!r}, quantize='int8')\n"
            "assert e.decode_path['kernels'] == 'pytorch' and e.decode_path['reason']\n"
            "print(repr(e.complete('def f():\\n', params=SamplingParams(max_tokens=4)).text)); e.close()\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CODE_ASSISTANT_NO_KERNELS": "1"})
    assert run.returncode == 0, run.stderr
    assert "runs in PyTorch" in run.stdout and "fast decode off" in run.stdout
