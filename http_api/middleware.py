"""Per-request bookkeeping, as plain ASGI so streamed responses are timed to their last byte:
request id, model headers, body-size limit, completion metrics and the one JSON log line."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import LOG_FIELDS
from .errors import error_body
from .generation import CompletionRecord

log = logging.getLogger("code_assistant.http")

COMPLETION_PATHS = frozenset({"/v1/completions", "/complete"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class RequestObserver:
    def __init__(self, app: ASGIApp, get_state):
        self.app, self.get_state = app, get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = self.get_state()
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")
        if not REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        fields = scope.setdefault(LOG_FIELDS, {})
        sizes = {"request_bytes": 0, "response_bytes": 0}
        status = [500]
        limit = state.settings.max_body_bytes
        is_completion = scope["path"] in COMPLETION_PATHS

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, f"request body is {declared} bytes; the limit is {limit}", request_id)
            status[0] = 413
            self._finish(state, scope, fields, sizes, status[0], started, request_id, is_completion)
            return

        body_timeout = state.settings.body_timeout_s
        body_deadline = time.monotonic() + body_timeout
        body_done = [False]

        async def counting_receive() -> Message:
            if body_done[0]:  # after the body only a disconnect comes, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, body_deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {body_timeout:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                sizes["request_bytes"] += len(message.get("body", b""))
                if sizes["request_bytes"] > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
                body_done[0] = not message.get("more_body", False)
            return message

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = [(b"x-request-id", request_id.encode()), (b"x-model", state.model.encode()),
                         (b"x-model-version", state.version.encode())]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            elif message["type"] == "http.response.body":
                sizes["response_bytes"] += len(message.get("body", b""))
            await send(message)

        if is_completion:
            state.metrics.active.inc()
        try:
            await self.app(scope, counting_receive, observing_send)
        finally:
            if is_completion:
                state.metrics.active.dec()
            self._finish(state, scope, fields, sizes, status[0], started, request_id, is_completion)

    def _finish(self, state, scope, fields: dict, sizes: dict, status: int, started: float, request_id: str,
                is_completion: bool) -> None:
        elapsed = time.perf_counter() - started
        model = state.model
        if is_completion:
            state.metrics.requests.labels(str(status), model).inc()
            if status < 400:
                state.metrics.duration.labels(model).observe(elapsed)
        line = {"event": "request", "request_id": request_id, "method": scope.get("method"), "path": scope["path"],
                "status": status, "latency_ms": round(elapsed * 1000, 2), **sizes, "model": model,
                "model_version": state.version}
        record: CompletionRecord | None = fields.pop("record", None)
        line.update(fields)
        if record is not None:
            line.update(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                        finish_reason=record.finish_reason, cached=record.cached,
                        ttft_ms=None if record.time_to_first_token_s is None
                        else round(record.time_to_first_token_s * 1000, 2))
            if state.settings.debug_log_code:
                line["completion"] = record.text
        log.info("request", extra={"fields": line})


async def _send_error(send: Send, status: int, message: str, request_id: str) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", None, "request_too_large")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": body})
