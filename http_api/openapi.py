"""The OpenAPI document as the server really answers (schemathesis checks the one against the other).

FastAPI derives a document from the request models, but it announces a 422 the server never sends
(validation errors are 400s in OpenAI's shape), lists none of the errors it does send, knows
nothing of the streamed `text/event-stream` answer or of /metrics' text format, and has no
bounds for values that SamplingParams checks or that are the server's policy. Those come from
here, read from SamplingParams' table (engine/sampling_params.py) and this server's settings: the
validation itself stays where it is.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST

from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SAMPLING_BOUNDS

from . import schemas
from .settings import ServerSettings

ERRORS = {
    400: "invalid request: malformed JSON, a wrong type, an unknown field or a value out of range",
    401: "missing or wrong API key (only when the server has keys)",
    404: "unknown model",
    408: "the request body did not arrive within the body timeout",
    409: "superseded: a newer request with the same `user` replaced this one (do not retry it)",
    413: "request body, prompt or extra context over the server's limits",
    429: "rate limit exceeded, or the engine is busy: its queue is full or would not start the request "
         "within the server's queue wait (see Retry-After)",
    503: "the model is not loaded, the engine could not finish, or too many connections (see Retry-After)",
}
COSTLY = [400, 401, 404, 408, 409, 413, 429, 503]   # the completion routes
OPERATIONS: dict[tuple[str, str], tuple[type, list[int]]] = {
    ("post", "/v1/completions"): (schemas.CompletionResponse, COSTLY),
    ("post", "/complete"): (schemas.SimpleCompleteResponse, COSTLY),
    ("post", "/v1/events"): (schemas.EventResponse, [400, 401, 408, 413, 429]),
    ("get", "/v1/models"): (schemas.ModelList, [401, 429, 503]),
    ("get", "/health"): (schemas.Health, [503]),
    ("get", "/ready"): (schemas.Readiness, [503]),
}
OPEN = {"/health", "/ready", "/metrics"}  # never need a key


def sampling_bounds(name: str) -> dict[str, Any]:
    """JSON Schema bounds of a SamplingParams field, from its table."""
    bound = SAMPLING_BOUNDS[name]
    limits = {key: value for key, value in (("minimum", bound.low), ("maximum", bound.high)) if value is not None}
    if name == "temperature":  # 0 is greedy, the rest a range
        return {"anyOf": [{"type": "number", "enum": [0]}, {"type": "number", **limits}]}
    return limits


def request_bounds(settings: ServerSettings) -> dict[str, dict[str, Any]]:
    """JSON Schema bounds per request field: sampling values (SamplingParams') and policy limits."""
    text = {"maxLength": settings.max_prompt_chars}
    stop = {"minLength": 1, "maxLength": MAX_STOP_CHARS}
    sampling = {name: sampling_bounds(name) for name in SAMPLING_BOUNDS}
    return {
        **sampling,
        "prompt": {"anyOf": [{"type": "string", **text},
                             {"type": "array", "items": {"type": "string", **text}, "minItems": 1, "maxItems": 1}]},
        "code": text, "suffix": text,
        "max_tokens": {**sampling["max_tokens"], "maximum": settings.max_tokens_limit},
        "stop": {"anyOf": [{"type": "string", **stop}, {"type": "array", "items": {"type": "string", **stop},
                                                         "maxItems": MAX_STOP_STRINGS}, {"type": "null"}]},
        "extra_context": {"maxItems": settings.max_extra_context_items},
        "max_prompt_tokens": {"minimum": 1},
        # Accepted so that standard clients work; only the neutral values are supported.
        "n": {"enum": [1]}, "best_of": {"enum": [1]}, "echo": {"enum": [False]}, "logprobs": {"type": "null"},
        "logit_bias": {"maxProperties": 0},
    }


def bound(schema: dict, extra: dict) -> dict:
    """`extra` applied to a property's schema: to its non-null branch when it may be null."""
    if "anyOf" in extra:
        nullable = any(branch.get("type") == "null" for branch in schema.get("anyOf", []))
        branches = extra["anyOf"] + ([{"type": "null"}] if nullable and not any(
            b.get("type") == "null" for b in extra["anyOf"]) else [])
        return {k: v for k, v in schema.items() if k not in ("anyOf", "type")} | {"anyOf": branches}
    if "anyOf" in schema:
        branches = [branch if branch.get("type") == "null" else {**branch, **extra} for branch in schema["anyOf"]]
        return {**schema, "anyOf": branches}
    return {**schema, **extra}


def build_openapi(app: FastAPI, settings: ServerSettings) -> dict:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="OpenAI-compatible code completion; errors are `{\"error\": {...}}`.")
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in (schemas.ErrorBody, *(model for model, _ in OPERATIONS.values())):
        for name, schema in model.model_json_schema(ref_template="#/components/schemas/{model}").get(
                "$defs", {}).items():
            components[name] = schema
        components[model.__name__] = {k: v for k, v in model.model_json_schema(
            ref_template="#/components/schemas/{model}").items() if k != "$defs"}
    bounds = request_bounds(settings)
    for name in ("CompletionRequest", "SimpleCompleteRequest"):
        properties = components[name]["properties"]
        for field, extra in bounds.items():
            if field in properties:
                properties[field] = bound(properties[field], extra)
    complete_stop = components["SimpleCompleteRequest"]["properties"]["stop"]  # /complete: a list only
    components["SimpleCompleteRequest"]["properties"]["stop"] = {
        **{k: v for k, v in complete_stop.items() if k != "anyOf"}, **bounds["stop"]["anyOf"][1]}
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            model, statuses = OPERATIONS.get((method, path), (None, []))
            responses = operation["responses"]
            responses.pop("422", None)
            if model is not None:
                responses["200"]["content"] = {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
            for status in statuses:
                responses[str(status)] = {"description": ERRORS[status], "content": error}
            if path not in OPEN:
                operation["security"] = [{}, {"bearer": []}]  # a key only when the server has keys
    completions = doc["paths"]["/v1/completions"]["post"]["responses"]["200"]
    completions["description"] = ("The completion; with `stream: true`, server-sent events: `data: <completion>` "
                                  "each, `data: [DONE]` at the end, or a last `data: {\"error\": ...}` if cut off "
                                  "(the engine failed, or a newer request with the same `user` superseded it)")
    # In OpenAPI 3.1 an event stream's schema describes one event.
    completions["content"]["text/event-stream"] = {"schema": {
        "type": "object", "required": ["data"], "properties": {
            "data": {"type": "string", "description": "a CompletionResponse or ErrorBody as JSON, or [DONE]"},
            "event": {"type": "string"}}}}
    doc["paths"]["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST.split(";")[0]: {
            "schema": {"type": "string"}}}}
    return doc


def install_openapi(app: FastAPI, settings: ServerSettings) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi
