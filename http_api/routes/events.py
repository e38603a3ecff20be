"""POST /v1/events: shown / accepted / dismissed, counted per language and model; no code is stored."""
from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import MODEL_ALIAS, CallerDep, StateDep, log_fields
from ..schemas import EventRequest

router = APIRouter()


@router.post("/v1/events")
async def record_event(body: EventRequest, request: Request, state: StateDep, caller: CallerDep) -> dict:
    model = state.model if body.model in (None, MODEL_ALIAS) else body.model
    state.metrics.events.labels(body.event, body.language.lower(), model).inc()
    log_fields(request).update(completion_id=body.id, event=body.event, language=body.language.lower())
    return {"status": "recorded", "id": body.id, "event": body.event}
