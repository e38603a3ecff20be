"""A request as every part of the engine sees it, and what the caller gets back.

`Request` is the one piece of state the parts share: request setup (engine/request_setup.py)
makes it, the scheduler (engine/scheduler.py) gives it blocks and steps it, output
(engine/output.py) appends its tokens and sends its chunks.
"""
from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .draft import DraftSource, DraftSwitch, LiveIndex
from .kv_cache import BlockTable
from .repetition import RepetitionGuard
from .sampling_params import SamplingParams


class EngineBusy(RuntimeError):
    """The engine will not serve the request in time: its queue is full, or would keep it waiting
    past EngineConfig.max_queue_wait_ms. Front ends answer 429/busy with `retry_after_s`: the
    scheduler's estimate of when the queue ahead of it will have drained."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineError(RuntimeError):
    """The engine failed on a request (closed, or an internal error in the scheduler)."""


# What a request that failed inside a step is told; the exception itself goes to the log only.
INTERNAL_ERROR = "internal error in the engine while generating this request"


@dataclass
class Chunk:
    text: str                      # new text since the previous chunk
    tokens: int                    # tokens generated so far
    # At the end: "stop" | "length" | "cancelled" | "superseded" (by a newer request of the same
    # session); "error": see Request.failure.
    finish_reason: str | None = None
    prompt_tokens: int = 0         # tokens of the prompt the engine really ran (after fitting it to the context)


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    prompt_tokens: int = 0
    time_to_first_token: float = 0.0
    reused_tokens: int = 0


# Maps (request, one row of next-token logits) -> logits row; called for every step of that request
# before the token is chosen (a per-sequence model mixed into decoding plugs in here).
LogitsProcessor = Callable[["Request", torch.Tensor], torch.Tensor]


@dataclass(eq=False)  # compared and hashed by identity
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_chunk: Callable[[Chunk], None]
    generator: torch.Generator | None = None
    logits_processor: LogitsProcessor | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"   # the finish reason once `cancelled` is set
    session: str | None = None     # who is asking (CompletionInput.session)
    drafts: list[DraftSource] = field(default_factory=list)
    own_index: LiveIndex | None = None   # the prompt and the output so far, for drafts
    draft_switch: DraftSwitch = field(default_factory=DraftSwitch)  # drafts off while they are rejected
    tokens: list[int] = field(default_factory=list)  # prompt then output: the sequence
    cached: int = 0                # leading tokens whose keys and values are in the pool
    table: BlockTable = field(default_factory=BlockTable)
    admitted: bool = False
    output_ids: list[int] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    text: str = ""
    emitted: int = 0               # characters of `text` already sent
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    reused_tokens: int = 0
    error: str | None = None
    retry_after_s: float | None = None   # set with `error` when the scheduler shed the request (EngineBusy)
    heal: bytes = b""              # bytes the next tokens must still spell (token healing)
    skip_bytes: int = 0            # leading output bytes the user already has (the healed token)
    healing_tokens: int = 0        # generated tokens that only re-spelled the healed text
    guard: RepetitionGuard | None = None  # stops a completion that loops (engine/repetition.py)
    safe: int = 0                  # characters of `text` the guard lets out now

    @property
    def generated(self) -> int:
        """Tokens that produced new text: what max_tokens limits and usage reports."""
        return len(self.output_ids) - self.healing_tokens

    def cancel(self, reason: str = "cancelled") -> None:
        """Finish the request with `reason` ("cancelled", or "superseded"; the first reason given
        stands); its blocks are freed before the next decode step."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
        self.cancelled.set()

    def failure(self) -> Exception:
        """What the caller raises for a request that ended in an error (`error` is set)."""
        if self.retry_after_s is not None:
            return EngineBusy(self.error, self.retry_after_s)
        return EngineError(self.error)
