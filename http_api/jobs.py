"""Turn a validated request body into a CompletionJob, enforcing the server's size limits."""
from __future__ import annotations

from engine import SamplingError, SamplingParams

from .errors import APIError, sampling_error
from .generation import CompletionJob, ContextFile
from .schemas import ContextFileIn
from .settings import ServerSettings

MAX_TEMPERATURE = 2.0  # OpenAI's range; the engine would take more, but nothing useful lies above it


def make_job(settings: ServerSettings, prompt: str, suffix: str | None, *, max_tokens: int, temperature: float,
             top_p: float = 1.0, top_k: int | None = None, stop: list[str] | None = None, seed: int | None = None,
             cache_weight: float | None = None, extra_context: list[ContextFileIn] | None = None,
             prompt_param: str = "prompt", frequency_penalty: float = 0.0,
             presence_penalty: float = 0.0) -> CompletionJob:
    # The server's own policy limits; what sampling can compute is SamplingParams' to say.
    if max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {max_tokens}",
                       param="max_tokens", code="invalid_value")
    if temperature > MAX_TEMPERATURE:
        raise APIError(400, f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}",
                       param="temperature", code="invalid_value")
    size = len(prompt) + len(suffix or "")
    if size > settings.max_prompt_chars:
        raise APIError(413, f"{prompt_param} and suffix are {size} characters; the limit is "
                            f"{settings.max_prompt_chars}", param=prompt_param, code="prompt_too_large")
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_k=top_k,
                                top_p=float(top_p), stop=list(stop or []), seed=seed, cache_weight=cache_weight,
                                frequency_penalty=float(frequency_penalty), presence_penalty=float(presence_penalty))
    except SamplingError as e:
        raise sampling_error(e) from e
    return CompletionJob(prompt, suffix, params, check_extra_context(settings, extra_context))


def check_extra_context(settings: ServerSettings, items: list[ContextFileIn] | None) -> list[ContextFile]:
    items = items or []
    if len(items) > settings.max_extra_context_items:
        raise APIError(400, f"extra_context has {len(items)} items; at most {settings.max_extra_context_items}",
                       param="extra_context", code="invalid_value")
    total = sum(len(i.text.encode("utf-8")) + len(i.path.encode("utf-8")) for i in items)
    if total > settings.max_extra_context_bytes:
        raise APIError(413, f"extra_context is {total} bytes; the limit is {settings.max_extra_context_bytes}",
                       param="extra_context", code="extra_context_too_large")
    return [ContextFile(i.path, i.text) for i in items]
