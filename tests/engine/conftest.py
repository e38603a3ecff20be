"""Engines over the session's tiny model, shared by the tests of this package.

These tests check the plain engine against oracles, so token healing, the context cache model and
the loop guard (all on by default for users) are off here; tests/engine/test_cache_model.py and
test_repetition.py cover those."""
from __future__ import annotations

import threading

import pytest
import torch

from engine import CompletionInput, Engine, EngineConfig, SamplingParams

PLAIN = {"token_healing": False, "cache_weight": 0.0, "stop_loops": False}


@pytest.fixture(scope="session")
def fp32_engine(tiny_model_dir):
    engine = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(**PLAIN))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def int8_engine(tiny_model_dir):
    engine = Engine.load(tiny_model_dir, quantize="int8", config=EngineConfig(**PLAIN))
    yield engine
    engine.close()


@pytest.fixture
def make_engine(tiny_model_dir):
    """Engine.load with a chosen EngineConfig; closed after the test."""
    engines = []

    def make(quantize=None, **config) -> Engine:
        engines.append(Engine.load(tiny_model_dir, quantize=quantize, config=EngineConfig(**{**PLAIN, **config})))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def generate_ids(engine: Engine, prompt: str, params: SamplingParams, suffix: str | None = None,
                 logits_processor=None) -> tuple[list[int], list]:
    """The generated token ids and the chunks of one request."""
    done, chunks = threading.Event(), []

    def on_chunk(chunk) -> None:
        chunks.append(chunk)
        if chunk.finish_reason:
            done.set()

    request = engine.submit(CompletionInput(prompt, suffix, params=params), on_chunk, logits_processor)
    assert done.wait(30), "request did not finish"
    return list(request.output_ids), chunks


def force_tokens(tokens: list[int]):
    """A logits processor that makes the model emit exactly `tokens`, in order."""
    def processor(request, logits: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(logits, float("-inf"))
        forced[tokens[min(len(request.output_ids), len(tokens) - 1)]] = 0.0
        return forced
    return processor


@pytest.fixture(scope="session")
def make_engine_session(tiny_model_dir):
    """A small-batch engine with every default feature on (cache model, token healing), shared across
    hypothesis examples; 3 slots, so requests also queue."""
    engine = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(max_batch=3, max_queue=64))
    yield engine
    engine.close()
