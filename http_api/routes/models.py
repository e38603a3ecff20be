"""GET /v1/models: the one model this server serves."""
from __future__ import annotations

from fastapi import APIRouter

from ..deps import LimitedCallerDep, ServiceDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(caller: LimitedCallerDep, service: ServiceDep) -> dict:
    return {"object": "list", "data": [{"id": service.model, "object": "model", "created": 0,
                                        "owned_by": "code-assistant", "version": service.version}]}
