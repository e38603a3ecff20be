"""The engine against its oracles: full recompute, one request at a time, no prefix reuse."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from engine import CompletionInput, Engine, EngineBusy, SamplingParams

from .conftest import force_tokens, generate_ids

PROMPTS = ["def add(a, b):\n", "import json\n\nclass Decoder:\n    def __init__(self", "x = [", "for i in range(10):\n",
           "\"\"\"Email utilities.\"\"\"\nimport re\n\n\ndef quote(s):\n    return "]


def full_recompute_greedy(engine: Engine, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """The plain loop: the whole sequence through the model for every token, no cache."""
    ids, out = list(prompt_ids), []
    with torch.no_grad():
        while len(out) < max_tokens and len(ids) < engine.model.config.block_size:
            token = int(engine.model(torch.tensor([ids]))[0, -1].argmax())
            if token in engine.tokenizer.special_ids:
                break
            ids.append(token)
            out.append(token)
    return out


def test_cached_greedy_equals_full_recompute(fp32_engine):
    params = SamplingParams(max_tokens=24)
    for prompt in PROMPTS:
        ids, _ = generate_ids(fp32_engine, prompt, params)
        assert ids == full_recompute_greedy(fp32_engine, fp32_engine.build_prompt(prompt, None, 24), 24), prompt


def test_fim_prompt_uses_the_special_tokens(fp32_engine):
    t = fp32_engine.tokenizer
    ids = fp32_engine.build_prompt("def f(x):\n    return ", "\n\nprint(f(2))\n", 16)
    assert ids[0] == t.fim_prefix_id and ids[-1] == t.fim_middle_id and t.fim_suffix_id in ids
    out, _ = generate_ids(fp32_engine, "def f(x):\n    return ", SamplingParams(max_tokens=16), suffix="\n\nprint(f(2))\n")
    assert out == full_recompute_greedy(fp32_engine, ids, 16)


def test_long_prompts_are_trimmed_to_leave_room(fp32_engine):
    done = fp32_engine.complete("x = 1\n" * 500, params=SamplingParams(max_tokens=20))
    block = fp32_engine.model.config.block_size
    assert done.prompt_tokens <= block - 20 and done.tokens <= 20


def test_batched_equals_one_at_a_time(make_engine):
    engine = make_engine(max_batch=8)
    params = SamplingParams(max_tokens=20)
    alone = [generate_ids(engine, p, params)[0] for p in PROMPTS]
    gate = threading.Event()

    def wait_for_all(request, logits):  # hold the first prefill until every request is queued
        gate.wait(10)
        return logits

    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i, p=p: results.__setitem__(
        i, generate_ids(engine, p, params, logits_processor=wait_for_all if i == 0 else None)[0]))
        for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while engine.queue_depth() < len(PROMPTS) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(30)
    assert [results[i] for i in range(len(PROMPTS))] == alone


async def test_concurrent_streams_match_complete(fp32_engine):
    params = SamplingParams(max_tokens=16)

    async def collect(prompt):
        chunks = [c async for c in fp32_engine.stream(prompt, params=params)]
        assert chunks[-1].finish_reason in ("stop", "length") and all(c.finish_reason is None for c in chunks[:-1])
        return "".join(c.text for c in chunks), chunks[-1].tokens

    streamed = await asyncio.gather(*(collect(p) for p in PROMPTS))
    for prompt, (text, tokens) in zip(PROMPTS, streamed):
        done = fp32_engine.complete(prompt, params=params)
        assert (text, tokens) == (done.text, done.tokens)


def test_prefix_reuse_gives_the_same_tokens(make_engine):
    reuse, plain = make_engine(prefix_reuse=True), make_engine(prefix_reuse=False)
    params = SamplingParams(max_tokens=16)
    base = PROMPTS[4]
    for prompt in (base, base + "s", base + "s.replace(", PROMPTS[1], base + "s.rep"):
        assert generate_ids(reuse, prompt, params)[0] == generate_ids(plain, prompt, params)[0]
    again = reuse.complete(base + "s.replace(", params=params)
    assert again.reused_tokens > 0 and plain.complete(base, params=params).reused_tokens == 0
    stats = reuse.stats
    assert stats["prefix_cache_hits"] >= 1 and stats["prefix_cache_lookups"] >= stats["prefix_cache_hits"]
    assert plain.stats["prefix_cache_hits"] == 0


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_chunked_prefill_gives_the_same_tokens(make_engine, quantize):
    # Prompts forwarded 3 tokens a step (decoding between the chunks) against whole: the same greedy text.
    chunked, whole = make_engine(quantize, prefill_chunk=3), make_engine(quantize)
    params = SamplingParams(max_tokens=16)
    for prompt in PROMPTS:
        assert generate_ids(chunked, prompt, params)[0] == generate_ids(whole, prompt, params)[0], prompt


def test_prefix_is_copied_from_a_busy_slot(make_engine):
    engine = make_engine(max_batch=2)
    params = SamplingParams(max_tokens=8)
    expected = generate_ids(engine, PROMPTS[1] + "x", params)[0]
    release, started = threading.Event(), threading.Event()

    def hold(request, logits):
        started.set()
        release.wait(10)
        return logits

    engine2 = make_engine(max_batch=2)
    busy_chunks, results = [], []
    busy = engine2.submit(CompletionInput(PROMPTS[1], None, params=SamplingParams(max_tokens=30)), busy_chunks.append, hold)
    assert started.wait(10)
    waiter = threading.Thread(target=lambda: results.append(generate_ids(engine2, PROMPTS[1] + "x", params)))
    waiter.start()
    # The second request can only be admitted once the first step is released; it then copies the prefix.
    release.set()
    waiter.join(30)
    ids, _ = results[-1]
    assert ids == expected
    assert engine2.stats["prefix_cache_hits"] >= 1
    busy.cancel()


def test_cancellation_frees_the_blocks(make_engine):
    engine = make_engine(max_batch=1)
    started, release = threading.Event(), threading.Event()

    def hold(request, logits):
        started.set()
        release.wait(10)
        return logits

    chunks = []
    first = engine.submit(CompletionInput("def f():\n", params=SamplingParams(max_tokens=100)), chunks.append, hold)
    assert started.wait(10)
    assert engine.stats["running_batch_size"] == 1 and engine.stats["kv_cache_usage_ratio"] > 0
    first.cancel()
    release.set()
    second = engine.complete("x = ", params=SamplingParams(max_tokens=5))  # needs the only batch row
    assert second.finish_reason in ("stop", "length")
    assert chunks[-1].finish_reason == "cancelled" and len(first.output_ids) < 100
    assert engine.stats["running_batch_size"] == 0 and engine.stats["kv_cache_usage_ratio"] == 0


async def test_abandoned_stream_is_cancelled(fp32_engine):
    async for chunk in fp32_engine.stream("def f():\n", params=SamplingParams(max_tokens=100, stop=["zzz"])):
        break  # the client goes away after the first chunk
    await asyncio.sleep(0.2)
    assert fp32_engine.stats["running_batch_size"] == 0


def test_full_queue_raises_engine_busy(make_engine):
    engine = make_engine(max_batch=1, max_queue=1)
    started, release = threading.Event(), threading.Event()

    def hold(request, logits):
        started.set()
        release.wait(10)
        return logits

    engine.submit(CompletionInput("a", None, params=SamplingParams(max_tokens=3)), lambda c: None, hold)
    assert started.wait(10)
    engine.submit(CompletionInput("b", None, params=SamplingParams(max_tokens=3)), lambda c: None)
    assert engine.stats["queue_depth"] == 1
    with pytest.raises(EngineBusy):
        engine.submit(CompletionInput("c", None, params=SamplingParams(max_tokens=3)), lambda c: None)
    release.set()


def test_greedy_is_deterministic_and_seeds_repeat(fp32_engine):
    greedy = SamplingParams(max_tokens=20)
    assert fp32_engine.complete(PROMPTS[0], params=greedy).text == fp32_engine.complete(PROMPTS[0], params=greedy).text
    seeded = SamplingParams(max_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=1234)
    runs = {fp32_engine.complete(PROMPTS[0], params=seeded).text for _ in range(3)}
    assert len(runs) == 1
    others = {fp32_engine.complete(PROMPTS[0], params=SamplingParams(max_tokens=20, temperature=1.0, seed=s)).text
              for s in range(5)}
    assert len(others) > 1


def test_stop_strings_cut_the_text(fp32_engine):
    t = fp32_engine.tokenizer
    forced = t.encode("alpha beta\n\ngamma")
    done = fp32_engine.complete("x", params=SamplingParams(max_tokens=30, stop=["\n\n"]))
    assert "\n\n" not in done.text
    ids, chunks = generate_ids(fp32_engine, "x", SamplingParams(max_tokens=30, stop=["\n\n"]),
                               logits_processor=force_tokens(forced))
    assert "".join(c.text for c in chunks) == "alpha beta" and chunks[-1].finish_reason == "stop"
    _, chunks = generate_ids(fp32_engine, "x", SamplingParams(max_tokens=30, stop=["ta\n"]),
                             logits_processor=force_tokens(forced))
    assert "".join(c.text for c in chunks) == "alpha be"
    # One token may complete two stop strings; the earlier one cuts, whatever their order in the list.
    forced = t.encode("call(x):\n    pass")
    _, chunks = generate_ids(fp32_engine, "x", SamplingParams(max_tokens=30, stop=["\n", "):"]),
                             logits_processor=force_tokens(forced))
    assert "".join(c.text for c in chunks) == "call(x"


def test_max_tokens_is_never_exceeded(fp32_engine):
    for n in (1, 2, 7):
        done = fp32_engine.complete("def", params=SamplingParams(max_tokens=n))
        assert done.tokens <= n
        if done.finish_reason == "length":
            assert done.tokens == n


def test_multibyte_characters_are_never_split(fp32_engine):
    t = fp32_engine.tokenizer
    text = "é€😀 ok ü"
    forced = [b for b in text.encode("utf-8")]  # one token per byte: every character split across tokens
    forced = [t.token_bytes().index(bytes([b])) for b in forced]
    ids, chunks = generate_ids(fp32_engine, "s = '", SamplingParams(max_tokens=len(forced)),
                               logits_processor=force_tokens(forced))
    assert ids == forced
    assert "".join(c.text for c in chunks) == text
    for c in chunks:
        assert "\ufffd" not in c.text
        c.text.encode("utf-8")  # no lone surrogates or halves
    # Cut off by max_tokens inside a character: the half character is dropped, not shown.
    _, chunks = generate_ids(fp32_engine, "s = '", SamplingParams(max_tokens=3), logits_processor=force_tokens(forced))
    assert "".join(c.text for c in chunks) == "é"


def test_stats_names(fp32_engine):
    stats = fp32_engine.stats
    for name in ("queue_depth", "running_batch_size", "kv_cache_usage_ratio", "prefix_cache_hits",
                 "prefix_cache_lookups", "tokens_generated", "kv_bytes_per_token"):
        assert name in stats
    assert 0.0 <= stats["kv_cache_usage_ratio"] <= 1.0


def test_int8_kv_cache_is_smaller_and_close(make_engine):
    plain, small = make_engine(), make_engine(kv_int8=True)
    assert small.stats["kv_bytes_per_token"] < plain.stats["kv_bytes_per_token"] / 3
    params = SamplingParams(max_tokens=16)
    agree = [generate_ids(small, p, params)[0] == generate_ids(plain, p, params)[0] for p in PROMPTS]
    assert sum(agree) >= len(PROMPTS) - 2


def test_closed_engine_refuses_and_unknown_quantize_raises(tiny_model_dir, make_engine):
    from engine.engine import EngineError

    engine = make_engine()
    engine.close()
    with pytest.raises(EngineError):
        engine.complete("x")
    with pytest.raises(ValueError):
        Engine.load(tiny_model_dir, quantize="int3")


def test_a_failing_callback_cancels_only_its_request(fp32_engine):
    def broken(chunk):
        raise RuntimeError("event loop is closed")

    request = fp32_engine.submit(CompletionInput("def f():\n", params=SamplingParams(max_tokens=30)), broken)
    done = fp32_engine.complete("x = ", params=SamplingParams(max_tokens=5))
    assert done.finish_reason in ("stop", "length")
    assert request.cancelled.is_set() and fp32_engine.complete("y", params=SamplingParams(max_tokens=3)).tokens <= 3


def test_a_full_pool_makes_requests_wait_and_none_fail(make_engine):
    """A pool of 12 blocks (192 positions) for 6 requests of up to 128 positions each: they wait
    for blocks or are preempted, and every one ends with the text it has with a roomy pool."""
    roomy = make_engine(max_batch=8)
    # 13 blocks of 16 positions: block 0 is the pool's padding block
    small = make_engine(max_batch=8, kv_cache_mb=13 * 16 * roomy.stats["kv_bytes_per_token"] / 2**20)
    assert small.stats["kv_cache_blocks"] == 12
    params = SamplingParams(max_tokens=40)
    prompts = [p * 3 for p in PROMPTS] + [PROMPTS[0] * 4]
    expected = [generate_ids(roomy, p, params)[0] for p in prompts]
    results: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i, p=p: results.__setitem__(i, generate_ids(small, p, params)))
               for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, (ids, chunks) in sorted(results.items()):
        assert chunks[-1].finish_reason in ("stop", "length") and ids == expected[i], i
    assert len(results) == len(prompts)
    stats = small.stats
    assert stats["kv_cache_usage_ratio"] == 0 and stats["running_batch_size"] == 0


def test_a_32k_context_model_allocates_only_its_pool(code_bpe, tmp_path):
    from engine import EngineConfig
    from tests.conftest import make_model_dir

    model_dir = make_model_dir(tmp_path / "long", ranks=code_bpe, block_size=32768)
    engine = Engine.load(model_dir, quantize=None,
                         config=EngineConfig(kv_cache_mb=4, token_healing=False, cache_weight=0.0))
    try:
        assert engine.cache.total_bytes() <= 4 * 2**20
        # One sequence can still use the whole pool: a 3,000-token prompt, prefilled in chunks.
        done = engine.complete("x = 1\n" * 1000, params=SamplingParams(max_tokens=8))
        assert done.prompt_tokens > 2500 and done.finish_reason in ("stop", "length")
        again = engine.complete("x = 1\n" * 1000 + "y", params=SamplingParams(max_tokens=8))
        assert again.reused_tokens >= done.prompt_tokens - 32
        assert engine.cache.total_bytes() <= 4 * 2**20
    finally:
        engine.close()


def test_the_earliest_stop_string_cuts_whatever_its_place_in_the_list(fp32_engine):
    t = fp32_engine.tokenizer
    forced = t.encode("f(a, b):\n    return")
    _, chunks = generate_ids(fp32_engine, "x", SamplingParams(max_tokens=30, stop=["\n", "):"]),
                             logits_processor=force_tokens(forced))
    assert "".join(c.text for c in chunks) == "f(a, b" and chunks[-1].finish_reason == "stop"


def test_context_length_is_the_pools_when_the_pool_holds_fewer_positions_than_the_model(make_engine):
    """The tiny model has 128 positions; a pool of 3 blocks of 16 (block 0 is the null block)
    holds 32. Front ends size prompts from context_length, so it must be the pool's limit."""
    engine = make_engine(kv_cache_mb=3 * 16 * engine_bytes_per_token(make_engine) / 2**20, kv_block_tokens=16)
    assert engine.model.config.block_size == 128 and engine.stats["kv_cache_blocks"] == 2
    assert engine.context_length == 32
    assert engine.prompt_budget(8) <= 32 - 8
    done = engine.complete("x = 1\n" * 100, params=SamplingParams(max_tokens=8))
    assert 0 < done.prompt_tokens <= 24 and done.finish_reason in ("stop", "length")


def engine_bytes_per_token(make_engine) -> int:
    probe = make_engine(kv_cache_mb=1)
    return probe.stats["kv_bytes_per_token"]


def test_kernels_off_loads_no_compiled_kernel_at_all(tiny_model_dir):
    """EngineConfig(kernels=False) governs every compiled kernel: the int8 matmul, the decode step
    and the KV cache's attention all run in PyTorch, and no kernel library is even loaded."""
    import subprocess
    import sys

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps to see which libraries a process loaded")
    code = ("import os, pathlib\n"
            "from engine import Engine, EngineConfig, SamplingParams\n"
            "built = os.environ.get('CODE_ASSISTANT_CACHE', str(pathlib.Path.home() / '.cache' / 'code-assistant'))\n"
            f"e = Engine.load({str(tiny_model_dir)!r}, quantize='int8', config=EngineConfig(kernels=False))\n"
            "text = e.complete('def f():\\n', params=SamplingParams(max_tokens=6)).text\n"
            "print(e.decode_path['kernels'], e.decode_path['reason'].replace(' ', '_'),\n"
            "      any(built in line and '.so' in line for line in open('/proc/self/maps')))\n"
            "e.close()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["pytorch", "EngineConfig.kernels_is_False", "False"]


def test_default_weights_follow_what_the_directory_holds_and_the_model_size(tiny_model_dir, monkeypatch):
    """int8 for a small float model and for a directory stored int8 (the shipped one); int4 on the
    CPU from INT4_FROM_WEIGHTS weights on, and what Engine.load runs by default."""
    from engine import engine as engine_module
    from engine.model_dir import default_model_dir

    assert engine_module.default_weights(tiny_model_dir) == "int8"
    monkeypatch.setattr(engine_module, "INT4_FROM_WEIGHTS", 1)
    assert engine_module.default_weights(tiny_model_dir) == "int4"
    assert engine_module.default_weights(tiny_model_dir, "cuda") == "int8"
    assert engine_module.default_weights(default_model_dir()) == "int8"
    engine = Engine.load(tiny_model_dir)
    try:
        assert engine.weights == "int4"
        assert engine.complete("def add(a, b):\n    return", params=SamplingParams(max_tokens=4)).finish_reason in ("stop", "length")
    finally:
        engine.close()
