"""The context cache model mixed into decoding, and token healing."""
import asyncio

import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.cache_model import CacheModel, NgramCache

DEFINES = ("def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n\n\n"
           "def other():\n    pass\n\n\n")


def test_ngram_cache_predicts_a_seen_continuation():
    cache = NgramCache()
    cache.add_sequence([1, 2, 3, 4, 1, 2, 3, 5, 9, 1, 2, 3])
    order, nxt = cache.predict([7, 1, 2, 3])
    assert order == 3 and sorted(nxt.tolist()) == [4, 5]       # "1 2 3" was followed by 4 and by 5
    order, nxt = cache.predict([1, 2, 3, 4, 1, 2, 3, 5])
    assert order == 8 and nxt.tolist() == [9]
    assert cache.predict([42]) == (0, None)
    cache.append(4)                                         # the last sequence grows
    assert cache.predict([2, 3, 4])[1].tolist() == [1]
    cache.add_sequence([5, 8])                              # contexts never span two sequences
    assert sorted(cache.predict([3, 5])[1].tolist()) == [9]


def test_cache_model_mixes_towards_the_cached_token():
    model = CacheModel([[5, 6, 7, 5, 6, 7, 5, 6]], history=[5, 6, 7, 5, 6], weight=0.9)

    class Req:
        output_ids: list = []

    mixed = model(Req(), torch.zeros(16))
    assert int(mixed.argmax()) == 7
    Req.output_ids = [7]          # the generated token joins the history and the cache
    assert int(model(Req(), torch.zeros(16)).argmax()) == 5


def test_mixture_is_a_distribution_with_the_cache_share():
    model = CacheModel([[1, 2, 3, 1, 2, 3, 1, 2]], history=[1, 2], weight=0.8)
    logits = torch.randn(10)
    order, ids, counts = model.predict()
    lam = model.mixture_weight(order, counts)
    mixed = torch.softmax(model(type("R", (), {"output_ids": []})(), logits.clone()), -1)
    expected = (1 - lam) * torch.softmax(logits, -1)
    expected[3] += lam
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_cache_completes_a_name_defined_earlier_in_the_file(tiny_model_dir):
    engine = Engine.load(tiny_model_dir, quantize=None)
    try:
        prompt = DEFINES + "result = very_specific"
        on = engine.complete(prompt, params=SamplingParams(max_tokens=6, stop=["\n"]))
        off = engine.complete(prompt, params=SamplingParams(max_tokens=6, stop=["\n"], cache_weight=0.0))
        assert on.text.startswith("_name_42(")
        assert "name_42" not in off.text
        # neighbours given as extra context teach it names the prompt never shows
        extra = engine.complete("import helpers\n\nvalue = helpers.very_specific",
                                params=SamplingParams(max_tokens=6, stop=["\n"]),
                                extra_context=[{"path": "helpers.py", "text": DEFINES}])
        assert extra.text.startswith("_name_42(")
    finally:
        engine.close()


def test_weight_zero_is_the_plain_engine(tiny_model_dir):
    plain = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(cache_weight=0.0))
    default = Engine.load(tiny_model_dir, quantize=None)
    try:
        for prompt in (DEFINES + "x = very", "import os\n", "def f(a):\n    "):
            params = SamplingParams(max_tokens=12, cache_weight=0.0)
            a, b = plain.complete(prompt, params=params), default.complete(prompt, params=params)
            assert (a.text, a.tokens) == (b.text, b.tokens)
    finally:
        plain.close()
        default.close()


def test_batched_decoding_with_caches_equals_one_at_a_time(tiny_model_dir):
    engine = Engine.load(tiny_model_dir, quantize=None)
    prompts = [DEFINES + f"r{i} = very_specific" for i in range(3)] + ["import os\n", DEFINES + "def ot"]
    params = SamplingParams(max_tokens=10)
    try:
        alone = [engine.complete(p, params=params).text for p in prompts]

        async def together():
            async def one(p):
                return "".join([c.text async for c in engine.stream(p, params=params)])
            return await asyncio.gather(*(one(p) for p in prompts))

        assert asyncio.run(together()) == alone
    finally:
        engine.close()


def test_token_healing_completes_across_the_prompt_boundary(tiny_model_dir):
    """A prompt ending inside a token the file spells otherwise: healing drops the last token,
    re-generates it (so the cache's contexts match again) and never emits it twice."""
    healed = Engine.load(tiny_model_dir, quantize=None)
    unhealed = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(token_healing=False))
    try:
        prompt = DEFINES + "result = very_specific_na"
        params = SamplingParams(max_tokens=6, stop=["\n"])
        assert healed.complete(prompt, params=params).text.startswith("me_42(")
        assert not unhealed.complete(prompt, params=params).text.startswith("me_42(")
    finally:
        healed.close()
        unhealed.close()
