"""A validated request body to the engine's one typed input, `CompletionInput`, with the server's
own limits checked: the one place HTTP's protocol becomes the engine's."""
from __future__ import annotations

import dataclasses

from engine import CompletionInput, ContextFile, SamplingError, SamplingParams

from .errors import APIError, sampling_error
from .schemas import CompletionRequest, ContextFileIn, SimpleCompleteRequest
from .settings import ServerSettings

SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def completion_input(settings: ServerSettings, body: CompletionRequest | SimpleCompleteRequest, prompt: str,
                     prompt_param: str = "prompt", caller: str = "") -> CompletionInput:
    """`prompt`: the body's one prompt, named `prompt_param` in errors; `caller`: who sent it (the
    key id, or an id of the client's address without keys)."""
    # The server's own policy limits; what sampling can compute is SamplingParams' to say.
    if body.max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {body.max_tokens}",
                       param="max_tokens", code="invalid_value")
    suffix, max_prompt_tokens = body.suffix, body.max_prompt_tokens
    size = len(prompt) + len(suffix or "")
    if size > settings.max_prompt_chars:
        raise APIError(413, f"{prompt_param} and suffix are {size} characters; the limit is "
                            f"{settings.max_prompt_chars}", param=prompt_param, code="prompt_too_large")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise APIError(400, f"max_prompt_tokens must be a positive integer, got {max_prompt_tokens}",
                       param="max_prompt_tokens", code="invalid_value")
    try:  # the fields the request leaves out (or null) keep SamplingParams' defaults
        params = SamplingParams(**body.model_dump(include=SAMPLING_FIELDS, exclude_none=True))
    except SamplingError as e:
        raise sampling_error(e) from e
    return CompletionInput(prompt, suffix, context_files(settings, body.extra_context), params,
                           max_prompt_tokens=max_prompt_tokens, session=session(caller, body.user))


def session(caller: str, user: str | None) -> str | None:
    """The engine's session for a request: its `user` (one editor's document, say), within its
    caller, so that no caller can supersede another's requests by sending the same `user`."""
    return None if not user else f"{caller}:{user}"


def context_files(settings: ServerSettings, items: list[ContextFileIn] | None) -> tuple[ContextFile, ...]:
    items = items or []
    if len(items) > settings.max_extra_context_items:
        raise APIError(400, f"extra_context has {len(items)} items; at most {settings.max_extra_context_items}",
                       param="extra_context", code="invalid_value")
    total = sum(len(i.text.encode("utf-8")) + len(i.path.encode("utf-8")) for i in items)
    if total > settings.max_extra_context_bytes:
        raise APIError(413, f"extra_context is {total} bytes; the limit is {settings.max_extra_context_bytes}",
                       param="extra_context", code="extra_context_too_large")
    return tuple(ContextFile(i.path, i.text) for i in items)
