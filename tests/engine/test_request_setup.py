"""Request setup alone: a CompletionInput in, a Request ready to schedule out."""
from __future__ import annotations

import pytest

from engine.cache_model import CacheModel
from engine.config import EngineConfig
from engine.inputs import CompletionInput, ContextFile
from engine.model_dir import load_model_dir
from engine.prompt import PromptBuilder
from engine.request_setup import SNIPPET_INDEXES, RecentIndexes, RequestSetup
from engine.sampling_params import SamplingParams
from engine.suffix_index import MAX_MATCH


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model_dir(tiny_model_dir)[1]


def setup_for(tokenizer, **config) -> RequestSetup:
    return RequestSetup(tokenizer, PromptBuilder(tokenizer, 128), EngineConfig(**config))


def test_a_cut_short_name_is_healed_the_prompt_ends_before_it_and_the_output_must_spell_it(tokenizer):
    setup = setup_for(tokenizer, cache_weight=0.0)
    request = setup.request(CompletionInput("def add(a, b):\n    ret", params=SamplingParams(max_tokens=8)), print)
    # The run of spaces keeps all but its last, which training text glues to the word.
    assert request.heal == b" ret" and request.skip_bytes == 4
    assert tokenizer.decode(request.prompt_ids).endswith(":\n   ") and request.tokens == request.prompt_ids
    unhealed = setup_for(tokenizer, cache_weight=0.0, token_healing=False)
    assert unhealed.request(CompletionInput("x = ret", params=SamplingParams()), print).heal == b""


def test_the_cache_model_and_drafts_read_the_prefix_suffix_and_files(tokenizer):
    setup = setup_for(tokenizer)
    job = CompletionInput("def f(x):\n    return ", "\n\nprint(f(2))\n",
                          files=(ContextFile("util.py", "def helper():\n    pass\n"),), params=SamplingParams())
    request = setup.request(job, print)
    assert isinstance(request.logits_processor, CacheModel)
    assert [name for name, _ in request.logits_processor.sources] == ["prefix", "suffix", "neighbours"]
    assert request.drafts and request.own_index is not None
    plain = setup_for(tokenizer, cache_weight=0.0, draft_tokens=0).request(job, print)
    assert plain.logits_processor is None and plain.drafts == []


def test_neighbouring_files_are_indexed_once_and_the_least_recent_goes(tokenizer):
    setup = setup_for(tokenizer)
    first = setup.snippet_index("def a():\n    pass\n")
    assert setup.snippet_index("def a():\n    pass\n") is first
    for i in range(SNIPPET_INDEXES):
        setup.snippet_index(f"x{i} = {i}\n")
    assert setup.snippet_index("def a():\n    pass\n") is not first


def test_the_texts_around_the_cursor_are_indexed_once_while_they_recur(tokenizer):
    """Typing changes the text before the cursor and leaves the text after it: that one's index is
    reused; a request sent again reuses both."""
    setup = setup_for(tokenizer)

    def indexes(prefix: str, suffix: str) -> dict:
        return {kind: query.__self__ for kind, query in setup.cache_model(prefix, suffix, (), None).sources}

    first = indexes("def f(x):\n    return ", "\n\nprint(f(2))\n")
    typed = indexes("def f(x):\n    return x", "\n\nprint(f(2))\n")
    assert typed["suffix"] is first["suffix"] and typed["prefix"] is not first["prefix"]
    assert indexes("def f(x):\n    return ", "\n\nprint(f(2))\n")["prefix"] is first["prefix"]
    assert first["prefix"].document(0) == tokenizer.encode("def f(x):\n    return ")


def test_the_text_before_the_cursor_is_tokenized_once_for_the_prompt_and_the_cache_model(tokenizer, monkeypatch):
    setup = setup_for(tokenizer)
    encoded = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: encoded.append(text) or encode(text))
    prefix = "def f(x):\n    y = x * 2\n    return y\n\n\ndef g():\n"
    request = setup.request(CompletionInput(prefix, params=SamplingParams(max_tokens=8)), print)
    assert encoded.count(prefix) == 1
    assert request.prompt_ids == tokenizer.bos_ids + encode(prefix)
    assert request.logits_processor.history == encode(prefix)[-MAX_MATCH:]


def test_recent_indexes_hold_at_most_their_tokens(tokenizer):
    recent = RecentIndexes(tokenizer, max_entries=100, max_tokens=50)
    first = recent.get("x = 1\n" * 5)
    assert recent.get("x = 1\n" * 5) is first
    for i in range(10):
        recent.get(f"y{i} = {i}\n" * 3)
    assert recent.get("x = 1\n" * 5) is not first


def test_a_random_request_gets_its_seeded_generator_and_a_greedy_one_none(tokenizer):
    setup = setup_for(tokenizer, cache_weight=0.0)
    greedy = setup.request(CompletionInput("x", params=SamplingParams(temperature=0.0)), print)
    seeded = [setup.request(CompletionInput("x", params=SamplingParams(temperature=0.8, seed=7)), print)
              for _ in range(2)]
    assert greedy.generator is None
    assert seeded[0].generator.initial_seed() == seeded[1].generator.initial_seed() == 7
