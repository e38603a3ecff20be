"""The one completion path: /v1/completions, /complete (stream or not) all end in `open_completion`,
which calls `Engine.stream`. Front ends differ only in how they shape input and output.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import AsyncIterator

from engine import CompletionInput, Engine, EngineError

from .errors import superseded_error
from .metrics import Metrics
from .response_cache import ResponseCache, cache_key


@dataclass
class CompletionRecord:
    """What one completion did: filled in as it streams, read by the response and the request log."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    time_to_first_token_s: float | None = None
    cached: bool = False
    text: str = ""


class CompletionService:
    def __init__(self, engine: Engine, cache: ResponseCache | None, metrics: Metrics, model: str, version: str):
        self.engine, self.cache, self.metrics = engine, cache, metrics
        self.model, self.version = model, version

    def _cache_key(self, job: CompletionInput) -> str | None:
        if self.cache is None or job.params.temperature != 0.0:
            return None
        # Every sampling field but the seed (greedy decoding ignores it) decides the answer.
        params = {k: v for k, v in dataclasses.asdict(job.params).items() if k != "seed"}
        workspace = self.engine.workspace  # a changed workspace file changes the answer
        return cache_key(self.model, self.version, {
            "workspace": None if workspace is None else [id(workspace), workspace.version],
            "prompt": job.prompt, "suffix": job.suffix, "params": params, "path": job.path,
            "files": [[f.path, f.text] for f in job.files], "max_prompt_tokens": job.max_prompt_tokens})

    async def open_completion(self, job: CompletionInput) -> tuple[AsyncIterator[str], CompletionRecord]:
        """Start a completion and wait for its first text, so that a busy engine (EngineBusy), bad
        parameters or a newer request of the same session surface before any response bytes are
        sent. Returns the text pieces and a record."""
        record = CompletionRecord()
        key = self._cache_key(job)
        if key is not None and (hit := await self.cache.get(key)) is not None:
            if job.session is not None:  # answered from the cache, the newer request still supersedes
                self.engine.supersede(job.session)
            record.prompt_tokens, record.completion_tokens = hit["prompt_tokens"], hit["completion_tokens"]
            record.finish_reason, record.cached, record.text = hit["finish_reason"], True, hit["text"]
            record.time_to_first_token_s = 0.0
            return _replay(hit["text"]), record
        started = time.perf_counter()
        chunks = self.engine.stream(job)
        try:
            first = await chunks.__anext__()
        except BaseException:
            await chunks.aclose()
            raise
        if first.finish_reason == "superseded":
            await chunks.aclose()
            raise superseded_error()
        record.time_to_first_token_s = time.perf_counter() - started
        record.prompt_tokens = first.prompt_tokens
        self.metrics.ttft.labels(self.model).observe(record.time_to_first_token_s)
        return self._follow(first, chunks, record, key), record

    async def _follow(self, first, chunks, record: CompletionRecord, key: str | None) -> AsyncIterator[str]:
        try:
            chunk = first
            while True:
                record.completion_tokens = chunk.tokens
                if chunk.finish_reason == "superseded":  # its last text is nobody's any more
                    record.finish_reason = chunk.finish_reason
                    raise superseded_error()
                record.text += chunk.text
                if chunk.text:
                    yield chunk.text
                if chunk.finish_reason:
                    record.finish_reason = chunk.finish_reason
                    break
                chunk = await chunks.__anext__()
        except EngineError:
            record.finish_reason = "error"
            raise
        finally:
            await chunks.aclose()  # a client gone mid-stream cancels the engine request here
            self.metrics.tokens.labels(self.model).inc(record.completion_tokens)
        if key is not None and record.finish_reason in ("stop", "length"):
            await self.cache.put(key, {"text": record.text, "prompt_tokens": record.prompt_tokens,
                                       "completion_tokens": record.completion_tokens,
                                       "finish_reason": record.finish_reason})

    async def complete(self, job: CompletionInput) -> CompletionRecord:
        pieces, record = await self.open_completion(job)
        async for _ in pieces:
            pass
        return record


async def _replay(text: str) -> AsyncIterator[str]:
    if text:
        yield text
