"""One error family for the API, rendered in OpenAI's shape: {"error": {message, type, param, code}}.

Every failure a client can cause ends here as a 4xx; anything else is a logged 500 in the same shape.
"""
from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import EngineBusy, SamplingError
from engine.engine import EngineError

log = logging.getLogger("code_assistant.http")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, error.param, error.code), status_code=error.status,
                        headers=error.headers)


def busy_error(exc: EngineBusy) -> APIError:
    """Retry-After: the engine's estimate of when the queue ahead will have drained, in whole seconds."""
    return APIError(429, f"the server is busy ({exc}); retry shortly", "server_busy", code="engine_busy",
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


def superseded_error() -> APIError:
    """A newer request of the same session replaced this one. 409, and `x-should-retry: false`
    (the openai clients' own header): a retry would supersede the newer request in turn."""
    return APIError(409, "a newer request with the same user superseded this one", "invalid_request_error",
                    param="user", code="superseded", headers={"x-should-retry": "false"})


def sampling_error(exc: SamplingError) -> APIError:
    return APIError(400, str(exc), param=exc.field, code="invalid_value")


def engine_error(exc: EngineError) -> APIError:
    """The engine failed this request: the details go to the log, the client gets no internal text."""
    log.error("engine error", extra={"fields": {"event": "engine_error", "error": str(exc)}})
    return APIError(503, "the engine could not finish this request", "server_error", code="engine_error",
                    headers={"Retry-After": "1"})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', message)}", None
    if first.get("type") == "missing":
        if param is None:  # the body itself
            return "the request body is missing: send a JSON object", None
        return f"missing required parameter {param!r}", param
    if first.get("type") == "extra_forbidden":
        return f"unrecognized request argument {param!r}", param
    return (f"invalid value for {param!r}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = str(exc.detail)
        if isinstance(exc.__cause__, UnicodeError):
            message = "request body is not valid UTF-8 JSON"
        code = {408: "request_timeout", 413: "request_too_large", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, message, kind, code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(EngineBusy)
    async def on_busy(request: Request, exc: EngineBusy) -> JSONResponse:
        return error_response(busy_error(exc))

    @app.exception_handler(EngineError)
    async def on_engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(engine_error(exc))

    @app.exception_handler(SamplingError)
    async def on_sampling_error(request: Request, exc: SamplingError) -> JSONResponse:
        return error_response(sampling_error(exc))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, "internal server error", "server_error"))
