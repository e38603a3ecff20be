"""POST /complete: {code, suffix?, max_tokens, temperature, top_k} -> {completion, tokens, latency_ms, id, model}."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ..client_disconnect import cancel_on_disconnect
from ..deps import LimitedCallerDep, ServiceDep, StateDep, check_model, log_fields, note_completion
from ..jobs import completion_input
from ..schemas import SimpleCompleteRequest
from .completions import completion_id

router = APIRouter()


@router.post("/complete")
async def complete(body: SimpleCompleteRequest, request: Request, state: StateDep, caller: LimitedCallerDep,
                   service: ServiceDep) -> dict:
    check_model(body.model, service)
    started = time.perf_counter()
    job = completion_input(state.settings, body, body.code, prompt_param="code", caller=caller)
    id = completion_id()
    note_completion(request, state, id, body.code, body.suffix, False)
    record = await cancel_on_disconnect(request, service.complete(job))
    log_fields(request)["record"] = record
    return {"id": id, "completion": record.text, "tokens": record.completion_tokens,
            "finish_reason": record.finish_reason, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "model": service.model, "model_version": service.version}
