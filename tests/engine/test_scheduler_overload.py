"""Overload, stepped by hand: a session's newer request supersedes its older one, and a request the
queue would not start in time is shed with EngineBusy (at submit, or once its wait is over)."""
from __future__ import annotations

import time

import pytest

from engine import CompletionInput, EngineBusy
from engine.overload import MAX_RETRY_AFTER_S, QueueRate
from engine.request import Request
from engine.sampling_params import SamplingParams

from .conftest import force_tokens

from .test_scheduler import PROMPT, make, run_to_end, tokenizer  # noqa: F401  (the module's fixture)


def submit(scheduler, max_tokens: int = 3, session: str | None = None, prompt=PROMPT) -> tuple[Request, list]:
    chunks: list = []
    request = Request(list(prompt), SamplingParams(max_tokens=max_tokens), chunks.append, tokens=list(prompt),
                      session=session)
    scheduler.enqueue(request)
    return request, chunks


def reasons(*requests) -> list:
    return [chunks[-1].finish_reason if chunks else None for _, chunks in requests]


def test_a_newer_request_supersedes_the_waiting_one_of_its_session_and_no_other(tokenizer):
    scheduler, pool, _ = make(tokenizer, max_batch=1)
    busy = submit(scheduler, max_tokens=20)
    scheduler.step()  # `busy` holds the one batch slot
    older = submit(scheduler, session="editor-1")
    other = submit(scheduler, session="editor-2")
    newer = submit(scheduler, session="editor-1")
    scheduler.step()
    assert reasons(older, other, newer) == ["superseded", None, None]
    assert older[0].generated == 0 and older[0] not in scheduler.waiting
    assert scheduler.counters["requests_superseded"] == 1
    run_to_end(scheduler)
    assert reasons(busy, older, other, newer) == ["length", "superseded", "length", "length"]
    assert pool.held() == 0 and scheduler.sessions == {}


def test_a_newer_request_supersedes_the_running_one_and_takes_its_blocks(tokenizer):
    scheduler, pool, _ = make(tokenizer, max_batch=1)
    older = submit(scheduler, max_tokens=30, session="editor-1")
    scheduler.step()
    assert scheduler.running == [older[0]] and pool.held() > 0
    newer = submit(scheduler, max_tokens=3, session="editor-1")
    scheduler.step()
    assert reasons(older) == ["superseded"] and scheduler.running == [newer[0]]
    run_to_end(scheduler)
    assert reasons(older, newer) == ["superseded", "length"] and pool.held() == 0


def test_a_superseded_request_gives_its_queue_place_to_the_newer_one(tokenizer):
    scheduler, _, _ = make(tokenizer, max_batch=1, max_queue=1)
    submit(scheduler, max_tokens=20)
    scheduler.step()
    submit(scheduler, session="editor-1")
    with pytest.raises(EngineBusy):
        submit(scheduler, session="editor-2")  # a full queue for everyone else
    submit(scheduler, session="editor-1")      # but the same editor's next keystroke takes its place
    assert scheduler.counters["requests_shed"] == 1


def test_a_request_that_waited_past_the_queue_wait_is_shed_with_a_retry_after(tokenizer):
    scheduler, pool, _ = make(tokenizer, max_batch=1, max_queue_wait_ms=20)
    running = submit(scheduler, max_tokens=30)
    scheduler.step()
    late = submit(scheduler)
    time.sleep(0.05)
    scheduler.step()
    request, chunks = late
    assert chunks[-1].finish_reason == "error" and request not in scheduler.waiting
    failure = request.failure()
    assert isinstance(failure, EngineBusy) and failure.retry_after_s > 0
    assert scheduler.counters["requests_shed"] == 1
    run_to_end(scheduler)
    assert reasons(running) == ["length"] and pool.held() == 0


def test_a_preempted_sequence_keeps_its_place_past_the_queue_wait(tokenizer):
    # 6 usable blocks of 4: two 6-token prompts fit, but not both grown to 14 positions, so the
    # newer one goes back to the queue for longer than the (tiny) queue wait, and still finishes.
    scheduler, pool, _ = make(tokenizer, n_blocks=7, max_queue_wait_ms=1)
    first, second = submit(scheduler, max_tokens=8), submit(scheduler, max_tokens=8, prompt=[21, 22, 23, 24, 25, 26])
    scheduler.step()  # both admitted before their wait is over
    run_to_end(scheduler)
    assert scheduler.counters["preemptions"] >= 1 and scheduler.counters["requests_shed"] == 0
    assert reasons(first, second) == ["length", "length"] and pool.held() == 0


def test_submit_sheds_when_the_queue_s_pace_would_keep_the_request_past_its_wait(tokenizer):
    scheduler, _, _ = make(tokenizer, max_batch=1, max_queue=100, max_queue_wait_ms=500)
    submit(scheduler, max_tokens=20)
    scheduler.step()
    scheduler.queue_rate = QueueRate()
    scheduler.queue_rate.record(admitted=10, seconds=1.0)  # the queue has been moving at 10 a second
    for _ in range(5):  # 0 to 4 ahead: a wait of at most 0.4 s
        submit(scheduler)
    submit(scheduler)   # 5 ahead: 0.5 s, still within
    with pytest.raises(EngineBusy) as busy:
        submit(scheduler)  # 6 ahead: 0.6 s
    assert busy.value.retry_after_s == pytest.approx(0.7)  # its own turn: 7 requests at 10 a second
    assert scheduler.counters["requests_shed"] == 1 and len(scheduler.waiting) == 6


def test_without_a_queue_wait_the_queue_s_pace_sheds_nothing(tokenizer):
    scheduler, _, _ = make(tokenizer, max_batch=1, max_queue=100)
    scheduler.queue_rate.record(admitted=1, seconds=10.0)
    for _ in range(20):
        submit(scheduler)
    assert scheduler.counters["requests_shed"] == 0


def test_the_queue_rate_follows_backlogged_steps_and_bounds_its_retry_after():
    rate = QueueRate(half_life_s=5.0)
    assert rate.per_second is None and rate.wait_s(3) is None and rate.wait_s(0) == 0.0
    assert rate.retry_after_s(3, fallback_s=1.0) == 1.0  # not measured yet
    for _ in range(50):
        rate.record(admitted=2, seconds=0.1)   # 20 a second
    assert rate.per_second == pytest.approx(20.0)
    for _ in range(200):
        rate.record(admitted=1, seconds=0.1)   # the load changed: 10 a second, for 4 half-lives
    assert rate.per_second == pytest.approx(10.0, rel=0.05)
    assert rate.wait_s(15) == pytest.approx(1.5, rel=0.05)
    assert rate.retry_after_s(15, fallback_s=1.0) == pytest.approx(1.6, rel=0.05)
    stuck = QueueRate()
    stuck.record(admitted=0, seconds=2.0)
    assert stuck.retry_after_s(5, fallback_s=1.0) == MAX_RETRY_AFTER_S


def slow_request(engine, seconds: float) -> Request:
    """A request that holds a batch slot for about `seconds` (a token every 5 ms, never the end)."""
    word = engine.tokenizer.encode("x")[0]

    def slow(request, logits):
        time.sleep(0.005)
        return force_tokens([word])(request, logits)

    tokens = int(seconds / 0.005)
    return engine.submit(CompletionInput("def f(", params=SamplingParams(max_tokens=tokens, temperature=0.0)),
                         lambda chunk: None, slow)


def test_the_engine_raises_busy_for_a_request_shed_from_its_queue(make_engine):
    engine = make_engine(max_batch=1, max_queue_wait_ms=50, draft_tokens=0)
    slow_request(engine, 0.5)
    with pytest.raises(EngineBusy) as busy:
        engine.complete("x = ", params=SamplingParams(max_tokens=4))
    assert busy.value.retry_after_s > 0 and engine.stats["requests_shed"] == 1


def test_the_engine_finishes_a_superseded_request_with_superseded(make_engine):
    engine = make_engine(max_batch=1, draft_tokens=0)
    slow_request(engine, 0.3)
    older: list = []
    engine.submit(CompletionInput("y = ", params=SamplingParams(max_tokens=4), session="doc"), older.append)
    newer = engine.complete("y = 1", params=SamplingParams(max_tokens=4), session="doc")
    assert older[-1].finish_reason == "superseded" and newer.finish_reason in ("stop", "length")
    assert engine.stats["requests_superseded"] == 1


class ArrivingRunner:
    """A scripted runner that calls `arrive` during its first forward: a request that comes while a
    prefill runs (on the server, from another thread)."""

    def __init__(self, runner, arrive):
        self.runner, self.arrive, self.model, self.device = runner, arrive, runner.model, runner.device

    def forward(self, *args, **kwargs):
        arrive, self.arrive = self.arrive, None
        if arrive is not None:
            arrive()
        return self.runner.forward(*args, **kwargs)


def test_a_request_superseded_during_an_earlier_prefill_is_not_prefilled(tokenizer):
    # One editor whose keystrokes come faster than a long prefill: the waiting request the next
    # keystroke superseded must not run its own prefill before the newest one is admitted.
    from .test_scheduler import ScriptedRunner

    other, older, arrived = [21, 22, 23, 24], [31, 32, 33, 34], []
    base = ScriptedRunner(tokenizer.n_vocab, tokenizer.encode("x")[0])
    runner = ArrivingRunner(base, lambda: arrived.append(submit(scheduler, session="doc", prompt=[41, 42, 43])))
    scheduler, pool, _ = make(tokenizer, runner=runner)
    first = submit(scheduler, prompt=other)
    waiting = submit(scheduler, session="doc", prompt=older)
    scheduler.step()  # `first` prefills; meanwhile the editor's next keystroke supersedes `waiting`
    assert reasons(waiting) == ["superseded"] and waiting[0].generated == 0
    assert not any(row[:4] == older for idx, _ in base.calls for row in idx)
    run_to_end(scheduler)
    assert reasons(first, waiting, *arrived) == ["length", "superseded", "length"] and pool.held() == 0


def test_a_prefill_superseded_between_its_chunks_stops_and_leaves_them_cached(tokenizer):
    from .test_scheduler import ScriptedRunner

    prompt = list(range(11, 23))  # 12 tokens: three chunks of 4, three blocks of 4
    arrived = []
    base = ScriptedRunner(tokenizer.n_vocab, tokenizer.encode("x")[0])
    runner = ArrivingRunner(base, lambda: arrived.append(submit(scheduler, session="doc", prompt=prompt + [23])))
    scheduler, pool, _ = make(tokenizer, runner=runner, prefill_chunk=4)
    older = submit(scheduler, session="doc", prompt=prompt)
    scheduler.step()  # the older one's first chunk (a step's budget), during which the newer one arrives
    scheduler.step()  # the older one stops there; the newer one starts from its second block
    newer = arrived[0][0]
    assert reasons(older) == ["superseded"] and newer.reused_tokens == 4
    run_to_end(scheduler)
    assert [positions[0][0] for _, positions in base.calls[:4]] == [0, 4, 8, 12]
    assert reasons(*arrived) == ["length"] and pool.held() == 0
