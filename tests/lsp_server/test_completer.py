"""The completion pipeline against the real engine (tiny random model)."""
import asyncio
import json
from pathlib import Path

import pytest

from engine import Engine, EngineConfig
from lsp_server.completer import (GenerationParams, LocalBackend, complete, generation_done, should_complete,
                                  wants_multiline)
from lsp_server.context import Prompt
from lsp_server.documents import split_at
from lsp_server.settings import Settings

from ..conftest import make_model_dir

SOURCE = Path(json.__file__).with_name("encoder.py").read_text()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = Engine.load(tiny_model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def slow_engine(tmp_path_factory, code_bpe):
    """A 6 x 384 model with 2,048 positions, no drafts: a generation that runs long enough to cancel
    (the tiny model's 100 tokens take ~7 ms with the compiled decode step, an event loop's round trip)."""
    model_dir = make_model_dir(tmp_path_factory.mktemp("slow-model"), ranks=code_bpe, block_size=2048, n_layer=6,
                               n_embd=384)
    engine = Engine.load(model_dir, config=EngineConfig(draft_tokens=0, stop_loops=False))
    yield engine
    engine.close()


def test_should_complete_only_at_the_end_of_the_code_on_automatic_triggers():
    settings = Settings()
    assert should_complete(split_at("x = f(", 0, 6), settings, invoked=False)
    assert should_complete(split_at("x = f()", 0, 6), settings, invoked=False)      # closing bracket follows
    assert not should_complete(split_at("x = foo", 0, 5), settings, invoked=False)  # middle of a word
    assert should_complete(split_at("x = foo", 0, 5), settings, invoked=True)
    assert not should_complete(split_at("", 0, 0), settings, invoked=False)
    assert not should_complete(split_at("x = ", 0, 4), Settings(enable=False), invoked=True)


def test_multiline_for_the_setting_or_an_explicit_request_where_the_block_is_empty():
    opener = split_at("def f(x):\n    \n\ndef g():\n    pass\n", 1, 4)      # the empty body of f
    assert not wants_multiline(Settings(), False, opener)
    assert wants_multiline(Settings(), True, opener) and wants_multiline(Settings(multiline=True), False, opener)
    assert wants_multiline(Settings(), True, split_at("if ready {\n}\n", 0, 10))     # after a brace opener
    # anywhere else one line, whatever was asked: a block written into existing code repeats it
    body = "def total(xs):\n    t = 0\n    \n    return t\n"
    assert not wants_multiline(Settings(multiline=True), True, split_at(body, 2, 4))
    assert not wants_multiline(Settings(multiline=True), True, split_at("def f(x):\n    return x\n", 0, 9))
    assert not wants_multiline(Settings(multiline=True), True, split_at("x = 1\n", 0, 5))
    assert generation_done(False, "x = ")("abc\n") and not generation_done(False, "x = ")("abc")
    assert generation_done(True, "    ")("a\n    b\nc") and not generation_done(True, "    ")("a\n    b")


async def test_debounce_applies_to_automatic_triggers_only(engine):
    cursor = split_at("import json\nvalue = json.", 1, 13)
    backend = LocalBackend(engine)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await complete(cursor, Settings(debounce_ms=1000), backend, invoked=True)
    assert loop.time() - start < 1.0
    start = loop.time()
    await complete(cursor, Settings(debounce_ms=1000), backend, invoked=False)
    assert loop.time() - start >= 1.0


async def test_cancelling_a_generation_frees_the_engine_slot(slow_engine):
    engine = slow_engine
    backend = LocalBackend(engine)
    first_chunk = asyncio.Event()

    def never_done(text: str) -> bool:
        first_chunk.set()
        return False

    params = GenerationParams(max_tokens=1500, temperature=0.0, multiline=True)
    prompt = Prompt(SOURCE[:1000], None)
    task = asyncio.create_task(backend.generate(prompt, params, never_done))
    await asyncio.wait_for(first_chunk.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the scheduler drops cancelled requests at its next step
        if not engine.running:
            break
        await asyncio.sleep(0.01)
    assert not engine.running
    assert engine.stats["tokens_generated"] < 1000


async def test_stopping_early_closes_the_stream_and_frees_the_slot(engine):
    backend = LocalBackend(engine)
    params = GenerationParams(max_tokens=100, temperature=0.8, multiline=False)
    generated = await backend.generate(Prompt("import os\n", "\n"), params, lambda text: len(text) > 0)
    assert generated.id.startswith("lsp-")
    for _ in range(100):
        if not engine.running:
            break
        await asyncio.sleep(0.01)
    assert not engine.running
