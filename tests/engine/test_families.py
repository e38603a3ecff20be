"""Hugging Face families against transformers as the oracle, on random tiny models of each family
built here with transformers' config classes and `save_pretrained` (nothing downloaded), with a
tokenizer.json trained here that carries the family's special tokens."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the oracle (pip install -e '.[dev]')")

from benchmarks.hf_models import FAMILIES, STDLIB, save_random_model  # noqa: E402
from engine import CompletionInput, ContextFile, Engine, EngineConfig, ModelDirError, SamplingParams  # noqa: E402
from engine.kv_cache import BlockPool, BlockTable, KVCache  # noqa: E402
from engine.model_dir import load_model_dir  # noqa: E402
from engine.quantize import load_int8_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CODE = (STDLIB / "json" / "decoder.py").read_text()
ORACLE = {"token_healing": False, "cache_weight": 0.0, "stop_loops": False}
# Random weights of this scale make attention far from uniform and logits spread over ~10 units, so
# a mapping mistake shows; fp32 agrees to ~1e-6 (the tolerance is the issue's).
INIT = 0.2
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp(request.param) / request.param, FAMILIES[request.param],
                             initializer_range=INIT)


@pytest.fixture(scope="module")
def oracle(family_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(family_dir):
    return load_model_dir(family_dir)


def paged_cache(model, rows: int):
    """A KV pool and one block table per row, each with room for the model's whole context."""
    c = model.config
    per_row = -(-c.block_size // 16)
    cache, pool = KVCache(c.n_layer, rows * per_row + 1, 16, c.n_kv_head, c.head_dim), BlockPool(rows * per_row + 1, 16)
    tables = [BlockTable() for _ in range(rows)]
    for table in tables:
        assert pool.grow(table, c.block_size)
    return lambda rows_, positions: cache.batch([tables[r].blocks for r in rows_], positions,
                                                window=c.sliding_window or None)


def code_ids(tokenizer, n: int, offset: int = 0) -> list[int]:
    return tokenizer.bos_ids + tokenizer.encode(CODE)[offset:offset + n]


@torch.no_grad()
def test_logits_equal_transformers_without_and_with_the_kv_cache(ours, oracle):
    model, tokenizer, _ = ours
    ids = code_ids(tokenizer, 60)
    x = torch.tensor([ids])
    expected = oracle(x).logits
    assert (model(x) - expected).abs().max() <= TOLERANCE
    cache = paged_cache(model, 2)
    prefill = 37
    positions = torch.arange(prefill)[None]
    steps = [model(x[:, :prefill], positions, cache([1], positions))]
    for t in range(prefill, len(ids)):
        positions = torch.tensor([[t]])
        steps.append(model(x[:, t:t + 1], positions, cache([1], positions)))
    assert (torch.cat(steps, dim=1) - expected).abs().max() <= TOLERANCE


@torch.no_grad()
def test_batched_rows_at_different_positions_equal_transformers(ours, oracle):
    model, tokenizer, _ = ours
    a, b = code_ids(tokenizer, 40), code_ids(tokenizer, 23, offset=200)
    cache = paged_cache(model, 2)
    for slot, seq in ((0, a[:-1]), (1, b[:-1])):
        positions = torch.arange(len(seq))[None]
        model(torch.tensor([seq]), positions, cache([slot], positions))
    positions = torch.tensor([[len(a) - 1], [len(b) - 1]])
    batched = model(torch.tensor([[a[-1]], [b[-1]]]), positions, cache([0, 1], positions))[:, -1]
    for row, seq in enumerate((a, b)):
        assert (batched[row] - oracle(torch.tensor([seq])).logits[0, -1]).abs().max() <= TOLERANCE


def oracle_greedy(oracle, prompt_ids: list[int], n: int, stop_ids) -> list[int]:
    with torch.no_grad():
        out = oracle.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                              eos_token_id=sorted(stop_ids), pad_token_id=min(stop_ids))
    new = out[0, len(prompt_ids):].tolist()
    for i, token in enumerate(new):
        if token in stop_ids:
            return new[:i]
    return new


def test_greedy_generation_equals_generate_also_after_prefix_reuse(family_dir, oracle):
    from tests.engine.conftest import generate_ids

    engine = Engine.load(family_dir, quantize=None, config=EngineConfig(**ORACLE))
    try:
        tokenizer = engine.tokenizer
        prompt = tokenizer.decode(tokenizer.encode(CODE)[:80])
        params = SamplingParams(max_tokens=64)
        for text in (prompt, prompt + "\n    def extra(self):\n"):  # the second reuses the first's KV cache
            expected = oracle_greedy(oracle, engine.build_prompt(text, None, 64), 64, tokenizer.special_ids)
            assert generate_ids(engine, text, params)[0] == expected
        assert engine.stats["prefix_tokens_reused"] > 0
    finally:
        engine.close()


@torch.no_grad()
def test_int8_agrees_with_fp32_on_the_next_token(family_dir, tmp_path):
    """Measured as tests/engine/test_quantize.py does, on weights of the usual init scale: with the
    large weights of the other tests a random SwiGLU network is chaotic enough that int8 noise flips
    ~20 % of its near-tied choices, which a trained model does not show."""
    shutil.copy(family_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    from tokenizers import Tokenizer as Backend

    out = save_random_model(tmp_path / "model", FAMILIES[family_dir.name],
                            tokenizer=Backend.from_file(str(tmp_path / "tokenizer.json")))
    model, tokenizer, _ = load_model_dir(out)
    int8, _ = load_int8_model(out)
    same = total = 0
    for offset in range(0, 600, 120):
        x = torch.tensor([code_ids(tokenizer, 120, offset)])
        same += int((int8(x).argmax(-1) == model(x).argmax(-1)).sum())
        total += x.numel()
    print(f"int8 next-token agreement {same / total:.3f} over {total} positions")
    assert same / total >= 0.85


def test_every_engine_feature_runs_on_the_family(family_dir):
    """int8 weights and KV cache, continuous batching, the cache model and token healing together."""
    engine = Engine.load(family_dir, quantize="int8", config=EngineConfig(kv_int8=True, max_batch=3))
    try:
        import threading

        done, results = threading.Event(), []

        def on_chunk(chunk):
            if chunk.finish_reason:
                results.append(chunk)
                if len(results) == 4:
                    done.set()

        for prompt in ("def add(a, b):\n    ret", "import json\n\n", "class Decoder:\n    def ", "x = [1, 2"):
            engine.submit(CompletionInput(prompt, "\n", params=SamplingParams(max_tokens=8)), on_chunk)
        assert done.wait(60) and all(r.finish_reason in ("stop", "length") for r in results)
    finally:
        engine.close()


def test_sharded_bf16_checkpoint_loads(tmp_path):
    family = FAMILIES["qwen2"]
    out = save_random_model(tmp_path / "sharded", family, initializer_range=INIT, dtype=torch.bfloat16,
                            max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    model, tokenizer, _ = load_model_dir(out)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([code_ids(tokenizer, 50)])
    with torch.no_grad():
        assert (model(x) - oracle(x).logits).abs().max() <= TOLERANCE


def test_token_ids_equal_the_fast_tokenizer_on_a_stdlib_module(family_dir, ours):
    _, tokenizer, _ = ours
    fast = transformers.AutoTokenizer.from_pretrained(family_dir)
    text = (STDLIB / "argparse.py").read_text()
    assert tokenizer.encode(text) == fast(text, add_special_tokens=False).input_ids
    assert tokenizer.bos_ids + tokenizer.encode(text[:500]) == fast(text[:500]).input_ids


# The documented layouts, written as the text the model cards show (special tokens by name), tokenized
# by transformers' tokenizer, which splits the special tokens out of the text.
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
FILES = (ContextFile("pkg/util.py", "def helper():\n    pass\n"),)
LAYOUTS = {
    "gpt2": "# Compare this snippet from pkg/util.py:\n# def helper():\n#     pass\n" + PREFIX,   # no FIM tokens
    "santacoder": "<filename>pkg/util.py\ndef helper():\n    pass\n<|endoftext|>"
                  f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
    "deepseek": "<｜begin▁of▁sentence｜><｜fim▁begin｜># Compare this snippet from pkg/util.py:\n# def helper():\n#     pass\n"
                f"{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
    "qwen2": "<|repo_name|>repository\n<|file_sep|>pkg/util.py\ndef helper():\n    pass\n\n<|file_sep|>pkg/main.py\n"
             f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "starcoder2": "<repo_name>repository<file_sep>pkg/util.py\ndef helper():\n    pass\n"
                  f"<file_sep><fim_prefix>pkg/main.py\n{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
}


def test_fim_prompt_ids_follow_the_family_layout(family_dir, ours):
    name = family_dir.name
    engine = Engine(ours[0], ours[1], config=EngineConfig(**ORACLE))
    try:
        fast = transformers.AutoTokenizer.from_pretrained(family_dir)
        ids = engine.build_prompt(PREFIX, SUFFIX, 8, files=FILES, path="pkg/main.py")
        if name == "codellama":
            # Meta's reference: <s> <PRE> prefix (SentencePiece's leading space) <SUF> suffix (no
            # leading space) <MID>; the comment header opens the prefix.
            t = engine.tokenizer
            header = "# Compare this snippet from pkg/util.py:\n# def helper():\n#     pass\n"
            assert ids[:2] == t.bos_ids + [t.fim.prefix] and ids[-1] == t.fim.middle
            assert t.decode(ids[2:ids.index(t.fim.suffix)]) == " " + header + PREFIX
            assert t.decode(ids[ids.index(t.fim.suffix) + 1:-1]) == SUFFIX
            assert engine.build_prompt(PREFIX, SUFFIX, 8)[2:-1] == (
                fast(PREFIX, add_special_tokens=False).input_ids + [t.fim.suffix] + t.encode_continuation(SUFFIX))
        else:
            assert ids == fast(LAYOUTS[name], add_special_tokens=False).input_ids
        without_files = engine.build_prompt(PREFIX, SUFFIX, 8)
        assert len(without_files) < len(ids)
    finally:
        engine.close()


def test_generation_stops_at_the_end_of_text_and_file_separator(ours):
    _, tokenizer, _ = ours
    for name in ("<|endoftext|>", "<|file_sep|>", "<file_sep>", "▁<EOT>", "</s>", "<｜end▁of▁sentence｜>"):
        if tokenizer.token_id(name) is not None:
            assert tokenizer.token_id(name) in tokenizer.special_ids, name


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "code_assistant_cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def one_clear_line(proc, fragment: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in lines[0], lines[0]


def test_broken_directories_fail_with_one_clear_line(tmp_path):
    good = save_random_model(tmp_path / "good", FAMILIES["qwen2"])

    def broken(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(good, out)
        return out

    from safetensors.torch import load_file, save_file

    missing = broken("missing-tensor")
    tensors = load_file(missing / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
    shape = broken("wrong-shape")
    config = json.loads((shape / "config.json").read_text())
    (shape / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    unknown = broken("unknown-architecture")
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
    no_tokenizer = broken("no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases = {missing: "no tensor 'model.layers.1.mlp.up_proj.weight'", shape: "shape",
             unknown: "unsupported architecture 'MambaForCausalLM'", no_tokenizer: "no tokenizer.json"}
    for path, fragment in cases.items():
        with pytest.raises(ModelDirError, match="."):
            Engine.load(path)
        one_clear_line(cli("quantize", "--model", path, "--out", tmp_path / "q" / path.name), fragment)


def test_embedding_rows_past_the_tokenizer_are_never_chosen(tmp_path):
    """Qwen2.5 pads its embedding past the tokenizer; those ids have no text and must never come out."""
    out = save_random_model(tmp_path / "padded", FAMILIES["qwen2"], model_vocab=700)
    model, tokenizer, _ = load_model_dir(out)
    assert model.config.vocab_size == 700 > tokenizer.n_vocab
    with torch.no_grad():
        model.embed.weight[tokenizer.n_vocab:] = 0.0
        model.embed.weight[tokenizer.n_vocab, 0] = 1e4   # tied head: one of these two rows would win
        model.embed.weight[tokenizer.n_vocab + 1, 0] = -1e4  # every argmax
    engine = Engine(model, tokenizer, config=EngineConfig(**ORACLE))
    try:
        done = engine.complete("def f(x):\n", params=SamplingParams(max_tokens=16))
        assert done.finish_reason in ("stop", "length")
    finally:
        engine.close()
