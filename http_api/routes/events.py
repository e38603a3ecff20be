"""POST /v1/events: shown / accepted / dismissed, counted per language and model; no code is stored."""
from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import MODEL_ALIAS, LimitedCallerDep, StateDep, log_fields
from ..metrics import OTHER, language_label
from ..schemas import EventRequest

router = APIRouter()


@router.post("/v1/events")
async def record_event(body: EventRequest, request: Request, state: StateDep, caller: LimitedCallerDep) -> dict:
    # Only the model this server serves is a label value of its own (see metrics.OTHER).
    model = state.model if body.model in (None, MODEL_ALIAS, state.model) else OTHER
    language = language_label(body.language)
    state.metrics.events.labels(body.event, language, model).inc()
    log_fields(request).update(completion_id=body.id, event=body.event, language=language)
    return {"status": "recorded", "id": body.id, "event": body.event}
