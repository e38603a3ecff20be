"""The scheduler alone, stepped by hand over a scripted runner: who runs, when, and what is left."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.config import EngineConfig
from engine.kv_cache import BlockPool
from engine.model_dir import load_model_dir
from engine.output import Output
from engine.request import EngineBusy, Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model_dir(tiny_model_dir)[1]


class ScriptedRunner:
    """Always predicts `next_token`, but `poison` after `trigger`; a forward that carries `poison` raises."""

    def __init__(self, n_vocab: int, next_token: int, trigger: int = -1, poison: int = -1):
        self.model = SimpleNamespace(config=SimpleNamespace(block_size=64))
        self.device = torch.device("cpu")
        self.n_vocab, self.next_token, self.trigger, self.poison = n_vocab, next_token, trigger, poison
        self.calls: list[tuple[list[list[int]], list[list[int]]]] = []

    def forward(self, idx, positions, tables, n_real=None, last_only=False):
        self.calls.append((idx, positions))
        if any(self.poison in row for row in idx):
            raise RuntimeError("poisoned row")
        rows = [[row[-1]] if last_only else row for row in idx]
        logits = torch.zeros(len(rows), len(rows[0]), self.n_vocab)
        for b, row in enumerate(rows):
            for t, token in enumerate(row):
                logits[b, t, self.poison if token == self.trigger else self.next_token] = 1.0
        return logits


def make(tokenizer, n_blocks=64, block_tokens=4, runner=None, **config):
    words = tokenizer.encode("x")
    runner = runner or ScriptedRunner(tokenizer.n_vocab, words[0])
    cfg = EngineConfig(**{"draft_tokens": 0, "max_batch": 4, "max_queue": 8, **config})
    pool = BlockPool(n_blocks, block_tokens)
    return Scheduler(cfg, pool, runner, Output(tokenizer, context_end=64), threads=1), pool, runner


def submit(scheduler, prompt: list[int], max_tokens: int) -> tuple[Request, list]:
    chunks: list = []
    request = Request(list(prompt), SamplingParams(max_tokens=max_tokens), chunks.append, tokens=list(prompt))
    scheduler.enqueue(request)
    return request, chunks


def run_to_end(scheduler, limit: int = 200) -> None:
    for _ in range(limit):
        if not scheduler.running and not scheduler.waiting:
            return
        scheduler.step()
    raise AssertionError("the scheduler did not finish its requests")


PROMPT = [11, 12, 13, 14, 15, 16]


def test_admits_up_to_max_batch_oldest_first_then_the_rest(tokenizer):
    scheduler, pool, _ = make(tokenizer, max_batch=2)
    requests = [submit(scheduler, PROMPT[:3 + i], 3) for i in range(3)]
    scheduler.step()
    assert scheduler.running == [requests[0][0], requests[1][0]] and list(scheduler.waiting) == [requests[2][0]]
    run_to_end(scheduler)
    assert [chunks[-1].finish_reason for _, chunks in requests] == ["length"] * 3
    assert all(r.generated == 3 for r, _ in requests) and pool.held() == 0


def test_a_full_queue_says_busy(tokenizer):
    scheduler, _, _ = make(tokenizer, max_queue=1)
    submit(scheduler, PROMPT, 2)
    with pytest.raises(EngineBusy):
        submit(scheduler, PROMPT, 2)


def test_short_of_blocks_the_newest_goes_back_to_the_queue_and_every_request_still_finishes(tokenizer):
    # 6 usable blocks of 4: two 6-token prompts fit, but not both grown to 14 positions.
    scheduler, pool, _ = make(tokenizer, n_blocks=7)
    requests = [submit(scheduler, PROMPT, 8), submit(scheduler, [21, 22, 23, 24, 25, 26], 8)]
    run_to_end(scheduler)
    assert scheduler.counters["preemptions"] >= 1
    assert [r.generated for r, _ in requests] == [8, 8] and pool.held() == 0


def test_a_cached_prefix_is_not_forwarded_again(tokenizer):
    scheduler, _, runner = make(tokenizer)
    submit(scheduler, PROMPT + [17, 18, 19], 2)
    run_to_end(scheduler)
    runner.calls.clear()
    submit(scheduler, PROMPT + [17, 18, 19], 2)
    scheduler.step()
    prefill_positions = runner.calls[0][1][0]
    assert prefill_positions[0] == 8  # two full blocks of 4 reused, the rest recomputed
    assert scheduler.counters["prefix_cache_hits"] == 1


def test_running_sequences_decode_between_a_long_prompts_chunks(tokenizer):
    scheduler, _, runner = make(tokenizer, prefill_chunk=5)
    running, _ = submit(scheduler, PROMPT, 8)
    scheduler.step()  # its prompt but the last token (5 tokens), then its first token from the last
    long_prompt = list(range(30, 46))  # 16 tokens: 15 in three chunks of 5, the last in a decode step
    arriving, _ = submit(scheduler, long_prompt, 2)
    runner.calls.clear()
    for _ in range(3):
        scheduler.step()
    chunks = [positions[0] for idx, positions in runner.calls if len(idx[0]) > 1]
    assert chunks == [list(range(0, 5)), list(range(5, 10)), list(range(10, 15))]
    # each chunk, then a decode step of the other; after the last chunk the prompt's last token joins it
    assert [len(idx) for idx, _ in runner.calls] == [1, 1, 1, 1, 1, 2]
    assert running.generated == 4 and arriving.generated == 1
    run_to_end(scheduler)


def test_a_failing_step_fails_only_the_request_that_caused_it(tokenizer):
    x, y, poison = tokenizer.encode("x")[0], tokenizer.encode("y")[0], tokenizer.encode("@")[0]
    runner = ScriptedRunner(tokenizer.n_vocab, x, trigger=y, poison=poison)
    scheduler, pool, _ = make(tokenizer, runner=runner)
    healthy, healthy_chunks = submit(scheduler, PROMPT, 5)
    doomed, doomed_chunks = submit(scheduler, PROMPT[:3] + [y], 5)  # its first token is the poison
    run_to_end(scheduler)
    assert doomed.error and doomed_chunks[-1].finish_reason == "error"
    assert healthy.error is None and healthy.generated == 5 and healthy_chunks[-1].finish_reason == "length"
    assert pool.held() == 0


def test_a_cancelled_request_leaves_at_the_next_step_and_gives_its_blocks_back(tokenizer):
    scheduler, pool, _ = make(tokenizer)
    request, chunks = submit(scheduler, PROMPT, 50)
    scheduler.step()
    assert pool.held() > 0
    request.cancel()
    scheduler.step()
    assert chunks[-1].finish_reason == "cancelled" and not scheduler.running and pool.held() == 0


def test_cancelled_waiting_requests_are_dropped_while_other_threads_submit(tokenizer):
    """Found under open-loop load: reading the queue unlocked while a submitting thread appended
    raised "deque mutated during iteration" and failed every running request."""
    import threading

    scheduler, _, _ = make(tokenizer, max_queue=100_000, max_batch=1)
    for _ in range(5_000):
        submit(scheduler, PROMPT, 1)
    stop = threading.Event()

    def submitting():
        while not stop.is_set():
            request, _ = submit(scheduler, PROMPT, 1)
            request.cancel()

    thread = threading.Thread(target=submitting)
    thread.start()
    try:
        for _ in range(300):
            scheduler.drop_cancelled()
    finally:
        stop.set()
        thread.join()
