"""The scheduler: who runs. One thread steps every running sequence together (continuous batching).

Requests wait in a bounded queue and join between steps when the batch has room and the KV pool
(engine/kv_cache.py BlockPool) has blocks for them, reusing the cached full blocks their prompt
starts with (`admit`). A step forwards each running sequence's last token plus a draft of tokens
that may follow it (speculative decoding, engine/draft.py) through the runner (engine/runner.py)
and keeps what the model agrees with; output (engine/output.py) turns the chosen tokens into text.
Short of blocks, a draft goes first, then the newest sequence goes back to the queue (preemption).
Under overload requests leave early rather than late: a session's newer request supersedes its
older ones, and one the queue would not start within max_queue_wait_ms is shed (engine/overload.py).
A step that raises is run again for each request alone, so a failure fails only its own request.
The ladder: `admit` -> `prefill_step` -> `decode_step` -> `verify` -> Output.choose / Output.accept.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Callable

import torch

from . import kernels
from .config import EngineConfig
from .draft import propose
from .fast_decode import MAX_QUERIES
from .kv_cache import NULL_BLOCK, BlockPool, BlockTable
from .output import Output
from .overload import QueueRate
from .prefill_rate import MAX_STEP_TOKENS
from .request import INTERNAL_ERROR, EngineBusy, Request
from .runner import Runner

log = logging.getLogger("engine")
# A compiled step shorter than this at one thread runs one thread. At 2 ms the shipped model's
# threshold fell at 26-35 rows by the noise of its start-up timing, and 32 streams' steps ran at
# one thread or two by chance; at 1 ms it is 14-18 rows, which an editor load at 33 requests/s
# reaches in 7 of ~5,700 steps (most are 1-4 rows).
SHORT_STEP_S = 0.001
PROBE_POSITION = 255      # where the rows of the step that times the compiled step sit: a history to attend to
PROBE_PROMPT = 128            # tokens of the prompt that times the compiled step against PyTorch's (at most the budget)
COMPILED_PREFILL_SLACK = 1.25  # how much slower the compiled step may be and still run prompts


class Scheduler:
    def __init__(self, config: EngineConfig, pool: BlockPool, runner: Runner, output: Output, threads: int):
        self.config, self.pool, self.runner, self.output = config, pool, runner, output
        self.block_size = runner.model.config.block_size
        self.threads = threads             # the creator's count: the C kernels' pool uses it
        self.prefill_budget = config.prefill_chunk or MAX_STEP_TOKENS  # prompt tokens a step (Engine times it)
        self.running: list[Request] = []   # admission order: the newest is preempted first
        self.waiting: deque[Request] = deque()
        self.lock = threading.Lock()       # guards `waiting` against the submitting threads
        self.counters = {"requests": 0, "prefix_cache_lookups": 0, "prefix_cache_hits": 0,
                         "prefix_tokens_reused": 0, "preemptions": 0,
                         "draft_tokens_proposed": 0, "draft_tokens_accepted": 0,
                         "requests_shed": 0, "requests_superseded": 0}
        self.queue_rate = QueueRate()      # how fast the queue moves while it has a backlog
        self.sessions: dict[str, Request] = {}  # each session's newest request (under `lock`)
        self.accepted_by_position = [0] * config.draft_tokens
        self.stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)

    # ---- the callers' side --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def enqueue(self, request: Request) -> None:
        """Queue a request. Its session's older request is superseded first (it leaves at the next
        step, and its place counts no more); then the request is shed with EngineBusy if the queue
        is full or would keep it waiting past max_queue_wait_ms."""
        with self.lock:
            self._supersede_older(request)
            self._check_room()
            self.waiting.append(request)
            if request.session is not None:
                self.sessions[request.session] = request
        self._wake.set()

    def supersede(self, session: str) -> None:
        with self.lock:
            older = self.sessions.pop(session, None)
        if older is not None:
            older.cancel("superseded")

    def _supersede_older(self, request: Request) -> None:
        older = self.sessions.get(request.session) if request.session is not None else None
        if older is not None:
            older.cancel("superseded")

    def _check_room(self) -> None:
        ahead = sum(not r.cancelled.is_set() for r in self.waiting)
        limit_s = self.config.max_queue_wait_ms / 1000
        if ahead >= self.config.max_queue:
            raise self._busy(f"queue full ({self.config.max_queue} waiting)", ahead)
        wait_s = self.queue_rate.wait_s(ahead)
        if limit_s and wait_s is not None and wait_s > limit_s:
            raise self._busy(f"{ahead} requests ahead would keep it waiting ~{wait_s:.1f} s "
                             f"(at most {limit_s:g} s)", ahead)

    def _busy(self, message: str, ahead: int) -> EngineBusy:
        self.counters["requests_shed"] += 1
        return EngineBusy(message, self.queue_rate.retry_after_s(ahead, fallback_s=1.0))

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop the loop, then fail whatever is queued or running."""
        self.stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self.lock:
            left, self.waiting = list(self.waiting), deque()
        for request in left + list(self.running):
            self.fail(request, "the engine was closed")

    # ---- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        kernels.use_threads(self.threads)
        threads = self.threads
        try:
            threads = self._measure_pytorch_threads()
            self._measure_kernel_threads()
            self._measure_compiled_prefill()
        except Exception:  # a model that cannot run a plain forward fails its requests, not here
            log.exception("measuring the scheduler's threads failed; keeping %d", self.threads)
        torch.set_num_threads(threads)
        while not self.stopped:
            if not self.running and not self.waiting:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            self.step()

    def step(self) -> None:
        """Drop the cancelled and the overdue, admit who fits, prefill up to prefill_budget prompt
        tokens, and decode one step of every running sequence whose prompt is in."""
        try:
            self.drop_cancelled()
            self.shed_overdue()
            backlog, started, admitted = bool(self.waiting), time.perf_counter(), self.counters["requests"]
            self.admit()
            self.prefill_step()
            decoding = [r for r in self.running if not self.prefilling(r)]
            if decoding:
                self.isolating(decoding, self.decode_step)
            if backlog:  # (a preempted sequence's return is not counted: it is no new request)
                self.queue_rate.record(self.counters["requests"] - admitted, time.perf_counter() - started)
        except Exception:  # a bug outside any request's step must not hang every client
            log.exception("engine scheduler failed")
            for request in list(self.running):
                self.fail(request, INTERNAL_ERROR)

    def _measure_pytorch_threads(self) -> int:
        """The torch thread count for this thread's PyTorch forwards (prefills, big steps).

        Outside the main thread each OpenMP region of two threads cost ~200 us more than at one
        here (torch 2.13, libgomp): the shipped model's 178-token prefill took 20 ms at two threads
        and 6 ms at one, while a 0.5B model's matmuls gain from the second. So time a 32-token
        forward at one thread and at all of them, alternately, and keep the faster.
        """
        model = self.runner.model
        if self.threads <= 1 or self.runner.device.type != "cpu":
            return self.threads
        idx = torch.zeros(1, min(32, self.block_size), dtype=torch.long, device=self.runner.device)
        best: dict[int, float] = {}
        for n in (1, self.threads) * 3:
            torch.set_num_threads(n)
            start = time.perf_counter()
            model(idx, last_only=True)
            best[n] = min(best.get(n, float("inf")), time.perf_counter() - start)
        chosen = min(best, key=best.get)
        log.info("scheduler thread: torch runs %d thread(s) (32-token forward: %s)", chosen,
                 ", ".join(f"{n} thread(s) {t * 1e3:.1f} ms" for n, t in best.items()))
        return chosen

    def _measure_kernel_threads(self) -> None:
        """The compiled step's threads by its size: all of them for a step of at least SHORT_STEP_S's
        worth of tokens at one thread, one for a shorter step.

        A short step gains little from a second thread and takes the core the HTTP event loop needs:
        on the shipped model (0.5 ms an 8-row step) a second thread on every step cost a server at 17
        requests/s 38 instead of 31 ms of CPU a request, and its p95 latency rose. A long step gains:
        a 0.5B model's 8-row step (75 ms at one thread, 42 at two), the shipped model's 32-row steps
        of many streams. After such a step the runner sends the helper to sleep at once
        (kernels.rest) rather than let it spin. The time a token: an 8-row step at one thread, its
        rows PROBE_POSITION positions into a history. Timed at one thread, not raced against all:
        timed while other processes start beside it (the engine bench loads four engines at once),
        all threads lost that race and a 0.5B engine ran at half speed for its whole life.
        """
        self.runner.threads = self.threads
        if self.threads <= 1 or self.runner.compiled is None:
            return
        rows = min(8, self.runner.compiled.max_rows)
        position = min(PROBE_POSITION, self.block_size - 1)
        tables = [[NULL_BLOCK] * self.pool.blocks_for(position + 1)] * rows  # padding-like rows: the null block
        args = ([[0]] * rows, [[position]] * rows, tables)
        self.runner.all_threads_from = 1 << 30
        one = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            self.runner.forward(*args)
            one = min(one, time.perf_counter() - start)
        self.runner.all_threads_from = max(1, math.ceil(SHORT_STEP_S / one * rows))
        log.info("scheduler thread: the compiled step runs %d threads from %d tokens, else one (%d rows at one "
                 "thread: %.2f ms)", self.threads, self.runner.all_threads_from, rows, one * 1e3)

    def _measure_compiled_prefill(self) -> None:
        """Prefill through the compiled step too where it is no slower than PyTorch's forward
        (COMPILED_PREFILL_SLACK) for a PROBE_PROMPT-token prompt.

        PyTorch's forward gives the GIL up and takes it back around each of its ~25 operations a
        layer; under load the HTTP event loop takes it each time, and the scheduler waits for it
        back: at 25 requests/s on the shipped model the scheduler thread spent 40 ms of wall time
        a request for 24 ms of CPU. The compiled step gives the GIL up once a call. A 0.5B model's
        int8 prompt runs faster in PyTorch's blocked matmuls (oneDNN) and stays there; int4 ones
        run the same int4 kernel either way and go compiled.
        """
        runner = self.runner
        tokens = min(PROBE_PROMPT, self.prefill_budget)  # a step's prompt chunk is at most the budget
        if runner.compiled is None or self.block_size < tokens or tokens > runner.compiled.max_rows:
            return  # a step this wide runs in PyTorch anyway (FastDecoder.max_rows): nothing to compare
        prompt = [list(range(1, tokens + 1))]
        args = (prompt, [list(range(tokens))], [[NULL_BLOCK] * self.pool.blocks_for(tokens)])
        best: dict[int, float] = {}
        for limit in (runner.max_queries, self.prefill_budget) * 3:
            runner.max_queries = limit
            start = time.perf_counter()
            runner.forward(*args, last_only=True)
            best[limit] = min(best.get(limit, float("inf")), time.perf_counter() - start)
        pytorch, compiled = best[MAX_QUERIES], best[self.prefill_budget]
        runner.max_queries = self.prefill_budget if compiled <= COMPILED_PREFILL_SLACK * pytorch else MAX_QUERIES
        log.info("scheduler thread: prompts run %s (%d tokens: PyTorch %.1f ms, compiled %.1f ms)",
                 "compiled" if runner.max_queries > MAX_QUERIES else "in PyTorch", tokens,
                 pytorch * 1e3, compiled * 1e3)

    def isolating(self, requests: list[Request], step: Callable[[list[Request]], None]) -> None:
        """Run `step` over `requests`; when it raises, run it again for each request alone that it
        had not moved on yet, so a failure fails only the request that caused it.

        (A batch that failed while sampling may have drawn from the random generators of rows
        before the failing one; sampling raises for no valid parameters, so that is a bug's cost.)
        """
        progress = [len(r.output_ids) for r in requests]
        try:
            step(requests)
        except Exception:
            if len(requests) == 1:
                log.exception("engine step failed; failing its request")
                self.fail(requests[0], INTERNAL_ERROR)
                return
            log.warning("a step over %d requests failed; stepping them one at a time", len(requests))
            for request, before in zip(requests, progress):
                if request in self.running and len(request.output_ids) == before:
                    self.isolating([request], step)

    def drop_cancelled(self) -> None:
        """Finish the cancelled and superseded requests, running or waiting."""
        for request in [r for r in self.running if r.cancelled.is_set()]:
            self._drop(request)
        with self.lock:  # submitting threads append meanwhile: even reading the queue needs the lock
            gone = [r for r in self.waiting if r.cancelled.is_set()]
            if gone:
                self.waiting = deque(r for r in self.waiting if not r.cancelled.is_set())
        for request in gone:
            self._drop(request)

    def _drop(self, request: Request) -> None:
        self.counters["requests_superseded"] += request.cancel_reason == "superseded"
        self.finish(request, request.cancel_reason)

    def shed_overdue(self) -> None:
        """Requests that waited past max_queue_wait_ms without starting leave with EngineBusy: their
        editor has stopped waiting, and serving them late would make everyone after them late too.
        (A preempted sequence has started: it keeps its place.)"""
        limit_s = self.config.max_queue_wait_ms / 1000
        if not limit_s or not self.waiting:
            return
        now = time.perf_counter()
        with self.lock:
            overdue = [r for r in self.waiting if not r.admitted and now - r.submitted > limit_s]
            if not overdue:
                return
            leaving = set(overdue)
            self.waiting = deque(r for r in self.waiting if r not in leaving)
            self.counters["requests_shed"] += len(overdue)
            retry_after_s = self.queue_rate.retry_after_s(len(self.waiting), fallback_s=limit_s)
        for request in overdue:
            request.retry_after_s = retry_after_s
            self.fail(request, f"no batch slot within {limit_s:g} s (max_queue_wait_ms)")

    # ---- admission --------------------------------------------------------------------------
    def admit(self) -> None:
        """Admit waiting requests, oldest first, while the batch and the pool have room."""
        while self.waiting and len(self.running) < self.config.max_batch:
            request = self.waiting[0]
            if request.cancelled.is_set():  # superseded (or gone) during the prefill before it
                with self.lock:
                    self.waiting.popleft()
                self._drop(request)
                continue
            table = self._place(request)
            if table is None:
                if self.running:
                    return  # it waits for running sequences to give blocks back
                with self.lock:
                    self.waiting.popleft()
                self.fail(request, f"the sequence needs {self.pool.blocks_for(len(request.tokens))} KV blocks "
                          f"and the pool has {self.pool.n_blocks - 1} (EngineConfig.kv_cache_mb)")
                continue
            with self.lock:
                self.waiting.popleft()
            self._start(request, table)

    def _start(self, request: Request, table: BlockTable) -> None:
        """The request runs from here: its prompt is prefilled by the next prefill steps (all but
        the reused blocks, or after a preemption the output so far too)."""
        reused = len(table.hashes) * self.pool.block_tokens
        if not request.admitted:
            request.admitted, request.reused_tokens = True, reused
            self.counters["requests"] += 1
        request.table, request.cached = table, reused
        self.running.append(request)

    def _place(self, request: Request) -> BlockTable | None:
        """Blocks for the request's tokens, the longest cached prefix reused; None when the pool
        cannot give them and still keep a block for each running sequence's next step."""
        tokens = request.tokens
        table = self.pool.claim_prefix(tokens) if self.config.prefix_reuse else BlockTable()
        need = self.pool.blocks_for(len(tokens)) - len(table.blocks)
        if need + len(self.running) > self.pool.available() or not self.pool.grow(table, len(tokens)):
            self.pool.release(table)
            return None
        if self.config.prefix_reuse:
            reused = len(table.hashes) * self.pool.block_tokens
            self.counters["prefix_cache_lookups"] += 1
            self.counters["prefix_cache_hits"] += reused > 0
            self.counters["prefix_tokens_reused"] += reused
        return table

    # ---- the step ---------------------------------------------------------------------------
    @staticmethod
    def prefilling(request: Request) -> bool:
        """Whether prompt tokens other than the last are still to be forwarded: the last one goes
        through the request's first decode step, whose logits give its first token."""
        return request.cached < len(request.tokens) - 1

    def prefill_step(self) -> None:
        """Forward up to prefill_budget prompt tokens, oldest request first, each request's in one
        forward: a long prompt is spread over steps, and the running sequences decode between its
        chunks instead of waiting for all of it. A request superseded before a chunk stops there (the
        chunks done stay cached for the request that replaced it)."""
        budget = self.prefill_budget
        for request in [r for r in self.running if self.prefilling(r)]:
            if budget <= 0:
                return
            if request.cancelled.is_set():
                self._drop(request)
                continue
            n = min(budget, len(request.tokens) - 1 - request.cached)
            self.isolating([request], lambda alone: self._prefill_chunk(alone[0], n))
            budget -= n

    def _prefill_chunk(self, request: Request, n: int) -> None:
        start, end = request.cached, request.cached + n
        self.runner.forward([request.tokens[start:end]], [list(range(start, end))], [request.table.blocks],
                            last_only=True)
        request.cached = end
        self.pool.seal(request.table, request.tokens, end)

    def decode_step(self, requests: list[Request]) -> None:
        """One forward over the last token and the draft of each of `requests`; rows without a
        draft, or with a shorter one, are padded (the padding writes to the null block)."""
        rows = self._reserve(requests)
        if not rows:
            return
        width = 1 + max(len(draft) for _, draft in rows)
        idx, positions, n_real = [], [], []
        for request, draft in rows:
            row = [request.tokens[-1]] + draft
            first = request.cached
            idx.append(row + [row[-1]] * (width - len(row)))
            positions.append([first + min(t, len(row) - 1) for t in range(width)])
            n_real.append(len(row))
        logits = self.runner.forward(idx, positions, [r.table.blocks for r, _ in rows], n_real)
        argmax = self.output.argmax(logits)
        for b, (request, draft) in enumerate(rows):
            self._verify(request, draft, logits[b] if not self.output.takes_argmax(request) else None, argmax[b])

    def _reserve(self, requests: list[Request]) -> list[tuple[Request, list[int]]]:
        """Each of `requests` with its draft and the blocks its step writes to. Short of
        blocks, a draft is dropped first, then the newest sequence goes back to the queue
        (its full blocks stay cached for when it returns); a sequence alone that cannot grow
        finishes with "length"."""
        rows = []
        room = min(self.config.draft_tokens, (self.config.draft_step_tokens - len(requests)) // len(requests))
        for request in requests:
            if request not in self.running:
                continue  # preempted for an older sequence's step
            draft = self._draft(request, room)
            while not self.pool.grow(request.table, request.cached + 1 + len(draft)):
                if draft:
                    draft = []
                elif len(self.running) == 1:
                    self.finish(request, "length")
                    break
                else:
                    victim = self.running[-1]
                    self._preempt(victim)
                    rows = [(r, d) for r, d in rows if r is not victim]
                    if victim is request:
                        break
            else:
                rows.append((request, draft))
        return rows

    def _draft(self, request: Request, room: int) -> list[int]:
        room = min(room, request.params.max_tokens - request.generated - 1, self.block_size - len(request.tokens))
        if room <= 0 or not request.drafts or not request.draft_switch.allows(request.generated):
            return []
        return propose(request.drafts, request, room)

    def _preempt(self, request: Request) -> None:
        self._release(request)
        request.cached = 0
        self.counters["preemptions"] += 1
        with self.lock:
            self.waiting.appendleft(request)

    def _verify(self, request: Request, draft: list[int], logits: torch.Tensor | None, argmax: list[int]) -> None:
        """Choose tokens along the draft while the model agrees with it: logits[j] follows the
        draft's first j tokens, which the request holds by then, so every logits processor sees
        exactly the history it would see without a draft. `argmax[j]`: logits[j]'s, the token where
        the request takes the argmax (Output.takes_argmax; logits is then None)."""
        self.counters["draft_tokens_proposed"] += len(draft)
        accepted = 0
        try:
            for j in range(len(draft) + 1):
                proposed = draft[j] if j < len(draft) else None
                token = argmax[j] if logits is None else self.output.choose(request, logits[j], proposed)
                if token == proposed:
                    accepted += 1
                    self.counters["draft_tokens_accepted"] += 1
                    self.accepted_by_position[j] += 1
                if not self._accept(request, token) or token != proposed:
                    break
        finally:  # also when a logits processor raised part way: the tokens taken so far stand
            if draft:
                request.draft_switch.record(len(draft), accepted, request.generated)
            if request in self.running:
                # Keys and values are final for every token but the last; blocks past it held a
                # rejected draft and go back.
                request.cached = len(request.tokens) - 1
                self.pool.truncate(request.table, len(request.tokens))
                self.pool.seal(request.table, request.tokens, request.cached)

    def _accept(self, request: Request, token: int) -> bool:
        """Output takes the token; False when the request finished with it."""
        reason = self.output.accept(request, token)
        if reason is not None:
            self.finish(request, reason)
            return False
        return True

    # ---- leaving ----------------------------------------------------------------------------
    def _release(self, request: Request) -> None:
        """Give the request's blocks back; its full ones stay cached for the next keystroke."""
        if request in self.running:
            self.running.remove(request)
            self.pool.seal(request.table, request.tokens, request.cached)
            self.pool.release(request.table)

    def _forget_session(self, request: Request) -> None:
        if request.session is None:
            return
        with self.lock:
            if self.sessions.get(request.session) is request:
                del self.sessions[request.session]

    def finish(self, request: Request, reason: str) -> None:
        self._release(request)
        self._forget_session(request)
        self.output.finish(request, reason)

    def fail(self, request: Request, message: str) -> None:
        self._release(request)
        self._forget_session(request)
        self.output.fail(request, message)
