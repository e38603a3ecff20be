"""int4 weights (groups of 32, float16 scales): the compiled matmul against its PyTorch twin bit for
bit (the VNNI and the plain C paths), a tied head in int4 whose rows are also the embedding, the
one-call decode step against the model's forward, engines token for token with and without kernels,
`code-assistant quantize --bits 4` as users run it, and directories of the first int4 layout refused."""
from __future__ import annotations

import ctypes
import json
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
from engine.model_dir import ModelDirError, check_weights_files, load_model_dir
from engine.quantize import (INT4_METHOD, Int4Embedding, Int4Linear, Int8Embedding, dequantize_int4, load_int4_model,
                             load_int8_model, quantize_int4, write_int8_model_dir)
from tests.engine.test_fast_decode import require_kernel, run_requests

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(1, 64, 128, True), (3, 100, 37, False), (7, 192, 576, True), (20, 260, 70, True), (1, 896, 130, False)]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tiny_model_dir):
    out = {"gpt2": tiny_model_dir}
    for name in ("qwen2", "starcoder2", "codellama"):  # codellama: an untied head
        out[name] = save_random_model(tmp_path_factory.mktemp(name) / name, FAMILIES[name], TINY)
    return out


def layer(shape, seed=0):
    M, K, N, bias = shape
    torch.manual_seed(seed)
    w = torch.randn(N, K) * 0.05
    w[0] *= 1e-3  # group scales below float16's smallest normal (6.1e-5): subnormal halves
    packed, scale = quantize_int4(w)
    return packed, scale, (torch.randn(N) if bias else None), torch.randn(M, K) * 3


def test_quantize_int4_keeps_every_weight_within_half_a_step_but_the_clamped():
    torch.manual_seed(0)
    w = torch.randn(9, 100) * 0.1
    w[2, :32] = 0  # an all-zero group
    packed, scale = quantize_int4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (9, 64) and scale.shape == (9, 4)
    assert scale.dtype == torch.float16
    step = scale.abs().repeat_interleave(32, dim=1)[:, :100]
    error = (dequantize_int4(packed, scale, 100) - w).abs()
    # -8 * scale is the group's extreme exactly; +8 steps on the other side clamp to 7
    inside = w.abs() <= 7.5 * step
    assert (error[inside] <= step[inside] / 2 + 1e-7).all() and (error <= step + 1e-7).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_int4_matmul_kernel_equals_pytorch_bit_for_bit(shape):
    require_kernel()
    packed, scale, bias, x = layer(shape)
    K = shape[1]
    assert torch.equal(Int4Linear(packed, scale, bias, K)(x), Int4Linear(packed, scale, bias, K, use_kernels=False)(x))


def test_the_plain_c_int4_path_equals_pytorch_bit_for_bit():
    """The loop that runs where AVX-512 VNNI does not: the same source built without it."""
    require_kernel()
    path, reason = kernels.build(ROOT / "engine" / "decode_kernel.c", (*kernels.KERNELS["decode_kernel"], "-march=native", "-mno-avx512vnni"))
    if path is None:
        pytest.skip(f"the plain build failed: {reason}")
    lib = ctypes.CDLL(str(path))
    lib.int4_linear.argtypes = [kernels.ptr, kernels.i64, ctypes.POINTER(kernels.QLinear), kernels.ptr, kernels.i64]
    for shape in SHAPES:
        packed, scale, bias, x = layer(shape, seed=3)
        reference = Int4Linear(packed, scale, bias, shape[1], use_kernels=False)
        y = torch.empty(shape[0], shape[2])
        lib.int4_linear(x.data_ptr(), shape[0], reference.native(), y.data_ptr(), 1)
        assert torch.equal(y, reference(x)), shape


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernel", "pytorch"])
def test_an_int4_row_gets_the_same_result_alone_or_in_a_batch(use_kernels):
    packed, scale, _, x = layer((5, 96, 40, False), seed=1)
    x[3] *= 100
    lin = Int4Linear(packed, scale, None, 96, use_kernels)
    assert torch.equal(lin(x)[1], lin(x[1:2])[0])


def test_a_tied_head_is_int4_and_the_embedding_looks_its_rows_up(hf_dirs):
    model, _ = load_int4_model(hf_dirs["qwen2"])
    head, embed = model.head, model.embed
    assert isinstance(head, Int4Linear) and isinstance(embed, Int4Embedding)
    assert embed.weight.data_ptr() == head.weight.data_ptr()  # one table, not two
    ids = torch.tensor([[3, 0, 17], [model.config.vocab_size - 1, 5, 3]])
    table = dequantize_int4(head.weight, head.scale, model.config.n_embd)
    assert torch.equal(embed(ids), table[ids])


def test_an_untied_head_is_int4_beside_an_int8_embedding(hf_dirs):
    model, _ = load_int4_model(hf_dirs["codellama"])
    assert not model.config.tie_embeddings
    assert isinstance(model.head, Int4Linear) and isinstance(model.embed, Int8Embedding)


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "starcoder2", "codellama"])
def test_int4_decode_step_equals_the_model_forward(hf_dirs, family):
    require_kernel()
    torch.set_grad_enabled(False)
    model, _ = load_int4_model(hf_dirs[family])
    assert isinstance(model.head, Int4Linear)
    c = model.config
    fast = FastDecoder.build(model, torch.device("cpu"))
    assert fast is not None
    bt, n_blocks = 8, 24
    caches = [KVCache(c.n_layer, n_blocks, bt, c.n_kv_head, c.head_dim, kernel=False) for _ in range(2)]
    table = random.Random(0).sample(range(1, n_blocks), 8)
    window = c.sliding_window or None
    prompt = [(7 * i) % 200 + 3 for i in range(40)]
    pos = torch.arange(len(prompt)).unsqueeze(0)
    for cache in caches:
        model(torch.tensor([prompt]), pos, cache.batch([table], pos, window=window), last_only=True)
    layout = block_pool_layout(caches[1].k, caches[1].v)
    token = 11
    for step in range(6):
        p = torch.tensor([[len(prompt) + step]])
        ref = model(torch.tensor([[token]]), p, caches[0].batch([table], p, window=window))[0, -1]
        got = fast.forward([[token]], p.tolist(), layout, [table])[0, -1]
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), step
        token = int(ref.argmax())


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "codellama"])
def test_int4_engine_greedy_text_is_the_same_with_and_without_kernels(hf_dirs, family):
    require_kernel()
    prompts = ["def add(a, b):\n    ret", "import json\n\nclass Decoder:\n", "for i in range(10):\n    print("]
    texts = []
    for use_kernels in (True, False):
        # fp32 keys and values on both paths (with kernels the default is int8, without fp32; int8
        # keys dequantised in C and in PyTorch round apart: test_fast_decode compares them within a tolerance)
        engine = Engine.load(hf_dirs[family], quantize="int4",
                             config=EngineConfig(max_batch=3, kernels=use_kernels, kv_int8=False))
        try:
            assert engine.decode_path["kernels"] == ("c" if use_kernels else "pytorch")
            texts.append(run_requests(engine, prompts, SamplingParams(max_tokens=16)))
        finally:
            engine.close()
    assert texts[0] == texts[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "code_assistant_cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_quantize_bits_4_from_an_int8_directory_and_the_loaders_check_the_format(hf_dirs, tmp_path):
    int8_dir = write_int8_model_dir(hf_dirs["qwen2"], tmp_path / "int8")
    run = cli("quantize", "--bits", "4", "--model", str(int8_dir), "--out", str(tmp_path / "int4"))
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "int4" / "config.json").read_text())
    assert config["code_assistant"]["quantization"]["method"] == INT4_METHOD == "int4-group32-f16"
    card = (tmp_path / "int4" / "MODEL_CARD.md").read_text()
    assert "groups of 32" in card and "MB of safetensors" in card and "bits per byte" in card
    from safetensors import safe_open

    with safe_open(str(tmp_path / "int4" / "model.safetensors"), framework="pt") as f:
        # the tied embedding, stored once as the int4 head
        assert f.get_tensor("embed.weight").dtype == torch.uint8 and "head.weight" not in f.keys()
        assert f.get_tensor("embed.weight.scale").dtype == torch.float16
    stored, _ = load_int4_model(tmp_path / "int4")
    at_load, _ = load_int4_model(int8_dir)  # quantized at load: the same integers
    ids, pos = torch.tensor([[5, 9, 2, 7]]), torch.arange(4).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(stored(ids, pos), at_load(ids, pos))
    with pytest.raises(ModelDirError, match="int4"):
        load_int8_model(tmp_path / "int4")
    with pytest.raises(ModelDirError, match="int4"):
        load_model_dir(tmp_path / "int4")
    again = cli("quantize", "--bits", "4", "--model", str(tmp_path / "int4"), "--out", str(tmp_path / "again"))
    assert again.returncode == 2 and "already int4" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_damaged_int4_file_is_a_clear_error(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    assert cli("quantize", "--bits", "4", "--model", str(hf_dirs["gpt2"]), "--out", str(tmp_path / "q")).returncode == 0
    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    name = next(n for n, t in tensors.items() if t.dtype == torch.uint8)
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(ModelDirError, match=f"int4 tensor {name} should be"):
        load_int4_model(tmp_path / "q")


def test_eval_reports_bits_per_byte_as_the_engine_runs_int4(hf_dirs):
    results = {}
    for weights in ("int8", "int4"):
        run = cli("eval", "--model", str(hf_dirs["gpt2"]), "--src", str(ROOT / "tests" / "data" / "heldout" / "toolz"),
                  "--max-windows", "2", "--weights", weights)
        assert run.returncode == 0, run.stderr
        results[weights] = json.loads(run.stdout.strip().splitlines()[-1])
        assert results[weights]["weights"] == weights
    assert results["int4"]["bits_per_byte"] != results["int8"]["bits_per_byte"]  # the int4 weights did run
    assert abs(results["int4"]["bits_per_byte"] / results["int8"]["bits_per_byte"] - 1) < 0.1


def test_an_int4_directory_serves_and_evaluates_as_the_source_does_at_load(tmp_path):
    """128 inputs a row: the packed weights' headers (64 bytes a row) differ from the float shapes, and
    the checks every loader runs on the headers take them as int4 (not as a broken int8 file)."""
    shape = {**TINY, "hidden": 128, "intermediate": 256}
    source = save_random_model(tmp_path / "qwen2-128", FAMILIES["qwen2"], shape)
    assert cli("quantize", "--bits", "4", "--model", str(source), "--out", str(tmp_path / "int4")).returncode == 0
    results = {}
    for name, model in (("source", source), ("int4 directory", tmp_path / "int4")):
        run = cli("eval", "--model", str(model), "--src", str(ROOT / "tests" / "data" / "heldout" / "toolz"),
                  "--max-windows", "2", "--weights", "int4")
        assert run.returncode == 0, run.stderr
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])["bits_per_byte"]
    assert results["int4 directory"] == results["source"]  # the same integers, stored or made at load
    engine = Engine.load(tmp_path / "int4", quantize="int4")
    try:
        out = engine.complete(CompletionInput("def add(a, b):\n    return ", params=SamplingParams(max_tokens=4)))
    finally:
        engine.close()
    assert out.tokens > 0


def test_a_directory_of_the_first_int4_layout_is_refused_in_one_line(hf_dirs, tmp_path):
    """int4-group32 (float32 scales, the tied head int8 per row): not read as the new layout, and
    every way in says to quantize the source again."""
    assert cli("quantize", "--bits", "4", "--model", str(hf_dirs["qwen2"]), "--out", str(tmp_path / "old")).returncode == 0
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    config["code_assistant"]["quantization"]["method"] = "int4-group32"
    config_file.write_text(json.dumps(config))
    for load in (load_int4_model, check_weights_files):
        with pytest.raises(ModelDirError, match="older layout .*quantize its source again"):
            load(tmp_path / "old")
    for args in (("eval", "--model", str(tmp_path / "old"), "--src", str(ROOT / "tests" / "data" / "heldout" / "toolz"),
                  "--max-windows", "1", "--weights", "int4"),
                 ("quantize", "--bits", "4", "--model", str(tmp_path / "old"), "--out", str(tmp_path / "again"))):
        run = cli(*args)
        assert run.returncode == 2 and "older layout" in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
