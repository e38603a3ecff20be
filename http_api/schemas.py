"""Request bodies. Strict types: a string where a number belongs is a 400, not a silent coercion.

Sampling values are checked by SamplingParams against its bounds (engine/sampling_params.py), which
the OpenAPI document shows (openapi.py); the schemas here check shapes and read the stop limits
from the same place.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS


def _integral(value):
    # JSON Schema counts 5.0 as an integer (the OpenAPI document says "integer"); "5" stays a 400.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]


def _must_be_utf8(value: str) -> str:
    # JSON escapes can smuggle lone surrogates (\ud800) that no tokenizer can encode.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from e
    return value


def _stops(stops: list[str]) -> list[str]:
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"stop sequences must be 1 to {MAX_STOP_CHARS} characters")
    return [_must_be_utf8(s) for s in stops]


class ContextFileIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    path: str = Field(max_length=1024)
    text: str

    _utf8 = field_validator("path", "text")(_must_be_utf8)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions, OpenAI's legacy completions API (the parameters a code model can honour)."""
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = None
    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: Integer = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Integer | None = None
    n: Integer = 1
    user: str | None = Field(None, max_length=256, description=(
        "Who is asking: one editor's document, say. A newer request with the same user (and key) "
        "supersedes an older one still waiting or running: that one is answered 409 `superseded`."))
    presence_penalty: float = 0.0    # OpenAI's, in [-2, 2] (engine/sampling.py)
    frequency_penalty: float = 0.0
    # Accepted so standard clients work, but only their neutral values are supported.
    echo: bool = False
    best_of: Integer | None = None
    logprobs: Integer | None = None
    logit_bias: dict[str, float] | None = None
    cache_weight: float | None = None  # the language server's cacheWeight setting (see jobs.py)
    extra_context: list[ContextFileIn] | None = None
    max_prompt_tokens: Integer | None = Field(None, description=(
        "Extension: the most prompt tokens this request may use; lowers the server's own budget (its "
        "context less max_tokens). The language server's contextTokens setting."))

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            _must_be_utf8(item)
        return value

    _utf8 = field_validator("suffix")(lambda v: v if v is None else _must_be_utf8(v))

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        return _stops([] if value is None else [value] if isinstance(value, str) else value)


class SimpleCompleteRequest(BaseModel):
    """POST /complete: the simple shape for scripts and editors."""
    model_config = ConfigDict(strict=True, extra="forbid")

    code: str
    suffix: str | None = None
    max_tokens: Integer = 50
    temperature: float = 0.8
    top_k: Integer | None = 200
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: Integer | None = None
    model: str | None = None
    cache_weight: float | None = None
    extra_context: list[ContextFileIn] | None = None
    max_prompt_tokens: Integer | None = Field(None, description="As in CompletionRequest")
    user: str | None = Field(None, max_length=256, description="As in CompletionRequest")

    _utf8 = field_validator("code", "suffix")(lambda v: v if v is None else _must_be_utf8(v))
    _stop = field_validator("stop")(_stops)



# A fixed set, so the metric's `event` label stays bounded. partially_accepted: the user took the
# next word or line of it (VS Code's Ctrl+Right, Neovim's partial-accept mappings).
EventName = Literal["shown", "accepted", "partially_accepted", "dismissed"]


class EventRequest(BaseModel):
    """POST /v1/events: an editor reports what happened to a completion it was given."""
    model_config = ConfigDict(strict=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    event: EventName
    # Label values: kept short and plain so a client cannot blow up the metrics' cardinality.
    language: str = Field("unknown", pattern=r"^[A-Za-z0-9_+#.\-]{1,32}$")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@/\-]{1,128}$")


# Responses: what the OpenAPI document says the server sends (openapi.py); the routes build plain dicts.
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    """A completion; streamed, each `data:` event holds one of these (usage on the last) and then `[DONE]`."""
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class SimpleCompleteResponse(BaseModel):
    id: str
    completion: str
    tokens: int
    finish_reason: Literal["stop", "length"]
    latency_ms: float
    model: str
    model_version: str


class EventResponse(BaseModel):
    status: Literal["recorded"]
    id: str
    event: EventName


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    version: str
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    model_loaded: bool
    device: str
    model: str
    version: str
    kernels: Literal["c", "pytorch"] | None = None  # the decode step once the model is loaded
    kernels_reason: str | None = None               # why not "c"
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model: str | None = None
    version: str | None = None
    reasons: list[str] | None = None
