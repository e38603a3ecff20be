"""The context cache model mixed into decoding, and token healing."""
import asyncio

import torch

from engine import ContextFile, Engine, EngineConfig, SamplingParams
from engine.cache_model import CacheModel, MixConfig
from engine.suffix_index import SuffixIndex

DEFINES = ("def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n\n\n"
           "def other():\n    pass\n\n\n")


def request_with(output_ids):
    return type("Request", (), {"output_ids": output_ids})()


def test_cache_model_mixes_towards_the_cached_token():
    model = CacheModel.from_contexts([[5, 6, 7, 5, 6, 7, 5, 6]], history=[5, 6, 7, 5, 6])
    assert int(model(request_with([]), torch.zeros(16)).argmax()) == 7
    assert int(model(request_with([7]), torch.zeros(16)).argmax()) == 5   # generated tokens extend the history


def test_mixture_is_a_distribution_with_the_cache_share():
    model = CacheModel.from_contexts([[1, 2, 3, 1, 2, 3, 1, 2]], history=[1, 2])
    logits = torch.randn(10)
    length, ids, counts, trust = model.predict()
    model.previous = [None]
    lam = model.mixture_weight(trust)
    mixed = torch.softmax(model(request_with([]), logits.clone()), -1)
    expected = (1 - lam) * torch.softmax(logits, -1)
    expected[3] += lam
    assert length == 2 and torch.allclose(mixed, expected, atol=1e-6)


def test_trust_grows_with_the_length_and_the_frequency_of_a_match():
    mix = MixConfig()
    weights = [CacheModel([], [], mix).mixture_weight(mix.trust("prefix", n, 1)) for n in range(1, 9)]
    assert weights == sorted(weights) and weights[0] < 0.3 and weights[-1] > 0.9
    assert mix.trust("prefix", 2, 5) > mix.trust("prefix", 2, 1)
    assert mix.trust("suffix", 3, 1) < mix.trust("prefix", 3, 1)


def test_a_one_token_match_no_longer_decides_alone():
    """The loop of issue 16: after `return`, the old fixed weight copied what followed the last `return`."""
    model = CacheModel.from_contexts([[10, 11, 12]], history=[20, 10])   # only "10" matches: 1 token
    logits = torch.zeros(16)
    logits[4] = 3.0                                                     # the network is sure of 4
    assert int(model(request_with([]), logits).argmax()) == 4


def test_the_longer_match_decides_and_a_workspace_match_beats_a_shorter_local_one():
    local = SuffixIndex.build([[1, 2, 3, 9]])                  # "2 3" -> 9
    workspace = SuffixIndex.build([[7, 1, 2, 3, 5], [4, 2, 3, 5]])   # "1 2 3" -> 5, twice "2 3" -> 5
    model = CacheModel([("prefix", local.longest_match), ("workspace", workspace.longest_match)],
                       history=[0, 7, 1, 2, 3])
    length, ids, counts, _ = model.predict()
    assert length == 4 and ids.tolist() == [5]
    assert int(model(request_with([]), torch.zeros(16)).argmax()) == 5
    # tied lengths pool their counts
    tied = CacheModel([("prefix", local.longest_match), ("workspace", workspace.longest_match)], history=[8, 2, 3])
    length, ids, counts, _ = tied.predict()
    assert length == 2 and dict(zip(ids.tolist(), counts.tolist())) == {5: 2, 9: 1}


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
                                files=[ContextFile("helpers.py", DEFINES)])
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
