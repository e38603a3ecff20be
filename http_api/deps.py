"""FastAPI dependencies: the server state, the caller (API key), the rate limit, the loaded model."""
from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Request

from .errors import APIError
from .generation import CompletionService
from .rate_limit import retry_after_header
from .state import ServerState

LOG_FIELDS = "code_assistant.log"  # scope key: a dict the request log line is built from


def log_fields(request: Request) -> dict:
    return request.scope.setdefault(LOG_FIELDS, {})


def get_state(request: Request) -> ServerState:
    return request.app.state.server


StateDep = Annotated[ServerState, Depends(get_state)]


def client_id(request: Request) -> str:
    host = request.client.host if request.client else "unknown"
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def take_budget(state: ServerState, bucket: str) -> None:
    wait_s = state.limiter.acquire(bucket)
    if wait_s > 0:
        raise APIError(429, f"rate limit of {state.limiter.per_minute} requests per minute exceeded",
                       "rate_limit_error", code="rate_limit_exceeded", headers=retry_after_header(wait_s))


def get_caller(request: Request, state: StateDep) -> str:
    """The key id of an authenticated caller; without keys configured, an id for the client address.
    Failed attempts draw on a budget per client address, so keys cannot be guessed at full speed.
    (The header is read here, not declared: the OpenAPI document names it as a bearer scheme.)"""
    try:
        key = state.keyring.authenticate(request.headers.get("authorization"))
    except APIError:
        take_budget(state, "unauthenticated-" + client_id(request))
        raise
    if key is None:
        key = "anon-" + client_id(request)
    log_fields(request)["key_id"] = key
    return key


CallerDep = Annotated[str, Depends(get_caller)]


def get_limited_caller(state: StateDep, caller: CallerDep) -> str:
    """The caller, once it has taken one request from its per-minute budget (every route that costs work)."""
    take_budget(state, caller)
    return caller


LimitedCallerDep = Annotated[str, Depends(get_limited_caller)]


def get_service(state: StateDep) -> CompletionService:
    if state.service is None:
        message = f"model failed to load: {state.load_error}" if state.load_error else "the model is still loading"
        raise APIError(503, message, "server_error", code="model_not_loaded", headers={"Retry-After": "5"})
    return state.service


ServiceDep = Annotated[CompletionService, Depends(get_service)]


# A client that does not know the served model's name may ask for the product's name instead.
MODEL_ALIAS = "code-assistant"


def check_model(requested: str | None, service: CompletionService) -> None:
    if requested not in (None, MODEL_ALIAS, service.model):
        raise APIError(404, f"the model {requested!r} does not exist; this server serves {service.model!r}",
                       "invalid_request_error", param="model", code="model_not_found")


def note_completion(request: Request, state: ServerState, completion_id: str, prompt: str, suffix: str | None,
                    stream: bool) -> None:
    """Sizes for the request log; the code itself only under --debug-log-code."""
    fields = log_fields(request)
    fields.update(completion_id=completion_id, stream=stream, prompt_chars=len(prompt), suffix_chars=len(suffix or ""))
    if state.settings.debug_log_code:
        fields.update(prompt=prompt, suffix=suffix)
