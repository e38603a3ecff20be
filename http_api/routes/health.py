"""Liveness (/health), readiness (/ready) and Prometheus (/metrics); open without an API key."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import StateDep
from ..metrics import engine_load

router = APIRouter()


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    body = {"status": "healthy", "model_loaded": state.service is not None, "device": state.settings.device,
            "model": state.model, "version": state.version}
    if state.service is not None:  # which decode step is live: the compiled kernel, or PyTorch and why
        path = state.service.engine.decode_path
        body |= {"kernels": path["kernels"], "kernels_reason": path["reason"]}
    if state.load_error:
        # The process is alive but will never serve: let the orchestrator restart it.
        return JSONResponse({**body, "status": "unhealthy", "error": state.load_error}, status_code=503)
    return JSONResponse(body)


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    reasons = []
    if state.service is None:
        reasons.append("model not loaded")
    if state.draining:
        reasons.append("shutting down")
    if state.service is not None:
        engine = state.service.engine
        if engine_load(engine)["queue_depth"] >= engine.config.max_queue:
            reasons.append("queue saturated")
    if reasons:
        return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.model, "version": state.version})


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
