"""GET /v1/models: the one model this server serves."""
from __future__ import annotations

from fastapi import APIRouter

from ..deps import LimitedCallerDep, ServiceDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(caller: LimitedCallerDep, service: ServiceDep) -> dict:
    # context_length: prompt plus completion tokens the model takes (vLLM calls it max_model_len).
    return {"object": "list", "data": [{"id": service.model, "object": "model", "created": 0,
                                        "owned_by": "code-assistant", "version": service.version,
                                        "context_length": service.engine.context_length}]}
