"""POST /v1/completions in OpenAI's shape, streaming (SSE) or not."""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from engine import EngineError

from ..client_disconnect import cancel_on_disconnect
from ..deps import LimitedCallerDep, ServiceDep, StateDep, check_model, log_fields, note_completion
from ..errors import APIError, engine_error, error_body
from ..generation import CompletionRecord, CompletionService
from ..jobs import completion_input
from ..schemas import CompletionRequest

router = APIRouter()


def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex


def usage(record: CompletionRecord) -> dict:
    return {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens}


def completion_object(id: str, created: int, service: CompletionService, text: str, finish_reason: str | None,
                      record: CompletionRecord | None) -> dict:
    body = {"id": id, "object": "text_completion", "created": created, "model": service.model,
            "system_fingerprint": service.version,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}
    if record is not None:
        body["usage"] = usage(record)
    return body


def _check_supported(body: CompletionRequest) -> str:
    if body.n != 1:
        raise APIError(400, f"n={body.n} is not supported; only n=1", param="n", code="unsupported_value")
    if body.best_of not in (None, 1):
        raise APIError(400, "best_of other than 1 is not supported", param="best_of", code="unsupported_value")
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo", code="unsupported_value")
    if body.logprobs is not None:
        raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_value")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_value")
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise APIError(400, "a batch of prompts is not supported; send one prompt", param="prompt",
                           code="unsupported_value")
        return body.prompt[0]
    return body.prompt


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, state: StateDep, caller: LimitedCallerDep,
                            service: ServiceDep):
    check_model(body.model, service)
    prompt = _check_supported(body)
    job = completion_input(state.settings, body, prompt, caller=caller)
    id, created = completion_id(), int(time.time())
    note_completion(request, state, id, prompt, body.suffix, body.stream)
    if not body.stream:
        record = await cancel_on_disconnect(request, service.complete(job))
        log_fields(request)["record"] = record
        return completion_object(id, created, service, record.text, record.finish_reason, record)
    pieces, record = await service.open_completion(job)
    log_fields(request)["record"] = record

    async def events() -> AsyncIterator[str]:
        try:
            async for text in pieces:
                yield _sse(completion_object(id, created, service, text, None, None))
            yield _sse(completion_object(id, created, service, "", record.finish_reason, record))
            if body.stream_options and body.stream_options.include_usage:
                final = completion_object(id, created, service, "", None, record)
                final["choices"] = []
                yield _sse(final)
            yield "data: [DONE]\n\n"
        except (EngineError, APIError) as e:
            # The 200 and earlier chunks are sent: an error event (what OpenAI's SDK raises on) and
            # no [DONE], so no client takes the cut-off text for a finished completion (one the
            # engine failed, or one a newer request of the same `user` superseded).
            error = e if isinstance(e, APIError) else engine_error(e)
            log_fields(request)["error"] = error.code
            yield _sse(error_body(error.message, error.type, error.param, error.code))
        finally:
            await pieces.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
