"""A failure inside a step fails only the request that caused it; the others finish as if alone."""
from __future__ import annotations

import threading

import pytest
import torch

from engine import Engine, EngineConfig, EngineError, SamplingParams
from engine.model import Transformer
from engine.model_dir import load_model_dir

from .conftest import PLAIN, force_tokens

PROMPTS = ["def add(a, b):\n", "import json\n\nclass Decoder:\n", "for i in range(10):\n"]


class PoisonedModel(Transformer):
    """The real model, but a forward over `poison` raises (what a kernel bug or a bad row looks like)."""
    poison = -1

    def forward(self, idx, *args, **kwargs):
        if bool((idx == self.poison).any()):
            raise RuntimeError("poisoned token in the batch")
        return super().forward(idx, *args, **kwargs)


@pytest.fixture
def poisoned_engine(tiny_model_dir):
    model, tokenizer, _ = load_model_dir(tiny_model_dir)
    poisoned = PoisonedModel(model.config)
    poisoned.load_state_dict(model.state_dict())
    poisoned.poison = tokenizer.encode("@")[0]
    engine = Engine(poisoned, tokenizer, config=EngineConfig(max_batch=4, **PLAIN))
    yield engine
    engine.close()


def run_together(engine: Engine, jobs: list[tuple[str, SamplingParams, object]]) -> list:
    """Submit every job before the scheduler steps any; each result is a Completion or the EngineError."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def one(i, prompt, params, processor):
        start.wait()
        try:
            results[i] = engine.complete(prompt, params=params, logits_processor=processor)
        except EngineError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def alone(engine: Engine, prompt: str, params: SamplingParams) -> str:
    return engine.complete(prompt, params=params).text


def test_a_failing_logits_processor_fails_only_its_own_request(poisoned_engine):
    calls = []

    def failing(request, logits):
        calls.append(1)
        if len(calls) >= 3:  # from the third step on, as a deterministic bug would
            raise ValueError("processor bug")
        return logits

    greedy, sampled = SamplingParams(max_tokens=30), SamplingParams(max_tokens=30, temperature=0.8, seed=7)
    expected = [alone(poisoned_engine, PROMPTS[0], greedy), alone(poisoned_engine, PROMPTS[1], sampled)]
    results = run_together(poisoned_engine, [(PROMPTS[0], greedy, None), (PROMPTS[1], sampled, None),
                                             (PROMPTS[2], greedy, failing)])
    assert isinstance(results[2], EngineError)
    assert [r.text for r in results[:2]] == expected
    assert all(r.finish_reason in ("stop", "length") for r in results[:2])


def test_a_failing_forward_in_prefill_or_decode_fails_only_its_request(poisoned_engine):
    poison = PoisonedModel.poison = poisoned_engine.model.poison
    params = SamplingParams(max_tokens=30)
    expected = [alone(poisoned_engine, p, params) for p in PROMPTS[:2]]
    results = run_together(poisoned_engine, [
        (PROMPTS[0], params, None),
        ("x = '@'\n", params, None),                   # the prompt itself breaks the forward (prefill)
        (PROMPTS[1], params, None),
        (PROMPTS[2], params, force_tokens([11, 12, poison, 13])),  # a generated token breaks a decode step
    ])
    assert isinstance(results[1], EngineError) and isinstance(results[3], EngineError)
    assert [results[0].text, results[2].text] == expected
    # The engine keeps serving afterwards.
    assert alone(poisoned_engine, PROMPTS[0], params) == expected[0]


def test_error_message_is_not_the_internal_exception(poisoned_engine):
    def failing(request, logits):
        raise ValueError("secret internals")

    with pytest.raises(EngineError) as error:
        poisoned_engine.complete("x", params=SamplingParams(max_tokens=3), logits_processor=failing)
    assert "secret internals" not in str(error.value)
