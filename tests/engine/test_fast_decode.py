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
from engine import Engine, EngineConfig, SamplingParams
from engine import kernels
from engine.fast_decode import FastDecoder, block_pool_layout, slot_cache_layout
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
    """Prefill in PyTorch, then decode steps (one row, then two rows of three tokens at different
    positions) through the kernel and through the model: the same logits, the same cache."""
    require_kernel()
    torch.set_grad_enabled(False)
    model, _ = load_int8_model(hf_dirs[family])
    c = model.config
    fast = FastDecoder.build(model, torch.device("cpu"))
    assert fast is not None
    caches = [KVCache(c.n_layer, 2, c.n_kv_head, c.head_dim, c.block_size, int8=kv_int8) for _ in range(2)]
    prompt = [(7 * i) % 200 + 3 for i in range(40)]  # past StarCoder2's 24-token window
    pos = torch.arange(len(prompt)).unsqueeze(0)
    for slot in (0, 1):
        for cache in caches:
            model(torch.tensor([prompt]), pos, cache.view([slot], pos), last_only=True)
    # int8 keys: a value a rounding step apart on either side is expected, so compare loosely there
    tol = 2e-2 if kv_int8 else 1e-4
    token = 11
    for step in range(6):
        p = len(prompt) + step
        ref = model(torch.tensor([[token]]), torch.tensor([[p]]), caches[0].view([1], torch.tensor([[p]])))[0, -1]
        got = fast.forward([[token]], [[p]], slot_cache_layout(caches[1]), [[1]])[0, -1]
        assert (got - ref).abs().max() <= tol * ref.abs().max(), step
        token = int(ref.argmax())
    idx, positions = [[1, 2, 3], [4, 5, 6]], [[50, 51, 52], [47, 48, 49]]
    ref = model(torch.tensor(idx), torch.tensor(positions), caches[0].view([0, 1], torch.tensor(positions)))
    got = fast.forward(idx, positions, slot_cache_layout(caches[1]), [[0], [1]])
    assert (got - ref).abs().max() <= tol * ref.abs().max()
    if not kv_int8:
        assert torch.allclose(caches[0].k, caches[1].k, atol=1e-5) and torch.allclose(caches[0].v, caches[1].v, atol=1e-5)


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
            engine.submit(text, None, params, on_chunk(i))
        for _ in texts:
            assert done.acquire(timeout=60)
        out.update({round_ * 100 + i: "".join(p) for i, p in parts.items()})
    return [out[k] for k in sorted(out)]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_engine_greedy_text_is_the_same_with_and_without_kernels(hf_dirs, family):
    """Token for token, with every engine feature on: continuous batching, prefix reuse (the
    second round), token healing and the context cache model (the defaults)."""
    require_kernel()
    prompts = ["def add(a, b):\n    ret", "import json\n\nclass Decoder:\n", "for i in range(10):\n    print(",
               "    return self.", "from email import utils\n\n\ndef parse(s):\n"]
    params = SamplingParams(max_tokens=24)
    texts = []
    for use_kernels in (True, False):
        engine = Engine.load(hf_dirs[family], quantize="int8", config=EngineConfig(max_batch=3, kernels=use_kernels))
        try:
            assert (engine.fast is not None) == use_kernels
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
            "assert e.fast is None\n"
            "print(repr(e.complete('def f():\\n', params=SamplingParams(max_tokens=4)).text)); e.close()\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CODE_ASSISTANT_NO_KERNELS": "1"})
    assert run.returncode == 0, run.stderr
    assert "runs in PyTorch" in run.stdout and "fast decode off" in run.stdout


def test_a_paged_block_pool_gives_the_same_logits_as_the_slot_cache(hf_dirs):
    """The layout a paged KV pool uses (token-major blocks, scattered block tables) reads the same
    keys as the slot cache: the same logits, bit for bit."""
    require_kernel()
    torch.set_grad_enabled(False)
    model, _ = load_int8_model(hf_dirs["qwen2"])
    c = model.config
    fast = FastDecoder.build(model, torch.device("cpu"))
    slots = KVCache(c.n_layer, 1, c.n_kv_head, c.head_dim, c.block_size)
    prompt = [(5 * i) % 300 + 2 for i in range(37)]
    pos = torch.arange(len(prompt)).unsqueeze(0)
    model(torch.tensor([prompt]), pos, slots.view([0], pos), last_only=True)
    bt, n_blocks = 8, 24
    shape = (c.n_layer, n_blocks, bt, c.n_kv_head, c.head_dim)
    k, v = torch.zeros(shape), torch.zeros(shape)
    table = random.Random(0).sample(range(1, n_blocks), 8)  # scattered, as a pool hands them out
    for p in range(len(prompt)):
        k[:, table[p // bt], p % bt] = slots.k[:, 0, :, p]
        v[:, table[p // bt], p % bt] = slots.v[:, 0, :, p]
    pool = block_pool_layout(k, v)
    token = 9
    for step in range(8):  # across a block boundary (position 40)
        p = len(prompt) + step
        a = fast.forward([[token]], [[p]], slot_cache_layout(slots), [[0]])[0, -1]
        b = fast.forward([[token]], [[p]], pool, [table])[0, -1]
        assert torch.equal(a, b), step
        token = int(a.argmax())
