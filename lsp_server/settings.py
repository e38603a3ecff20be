"""Language-server settings: one dataclass, parsed from initializationOptions and didChangeConfiguration."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from engine.sampling_params import SAMPLING_BOUNDS, sampling_value_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    enable: bool = True
    max_tokens: int = 48
    temperature: float = 0.0
    multiline: bool = False
    debounce_ms: int | None = None        # automatic triggers only; None: adaptive (debounce.py)
    remote_url: str | None = None
    api_key: str | None = None
    neighbours: bool = True
    neighbour_files: int = 4
    cache_weight: float | None = None     # None: the engine's default
    # Prompt tokens a completion may use (the model's context caps it): more context, slower prefill.
    context_tokens: int = 2048
    timeout_ms: int = 5000                # remote requests: a slow server gives an empty result, not a hang
    backend: str = "code-assistant"       # what runs at remote_url: see BACKENDS
    model: str | None = None              # the model name a remote server wants (Ollama, OpenAI-compatible)
    fim_template: str | None = None       # openai backend: engine/prompt.py FIM_TEXT_TEMPLATES name, or a layout
    typed_ahead_reuse: bool = True        # typing the ghost text's first characters shows the rest from cache
    prefetch: bool = True                 # after a suggestion shows, compute the one that follows accepting it
    exclude: tuple[str, ...] = ()         # globs (gitignore syntax) of files that never get completions
    recent_chunks: bool = True            # recently visited/edited lines as context (recent_chunks.py)
    workspace_index: bool = True          # index the workspace folders for the engine's cache model (local mode)
    workspace_max_files: int = 100_000
    workspace_max_megabytes: int = 32     # of source text indexed at most (~8 M tokens, ~70 MB of index)

    def updated(self, raw: Any) -> "Settings":
        """A copy with the recognised keys of `raw` applied; wrong types are logged and ignored."""
        if not isinstance(raw, dict):
            return self
        if isinstance(raw.get("codeAssistant"), dict):
            raw = raw["codeAssistant"]
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            key = _camel(field.name)
            if key not in raw:
                continue
            value = _coerce(field.name, raw[key])
            if value is _INVALID:
                log.warning("ignoring setting %s=%r: wrong type or out of range", key, raw[key])
            else:
                changes[field.name] = value
        return dataclasses.replace(self, **changes)


_INVALID = object()

# The editor's own limits; the sampling settings (max_tokens, temperature, cache_weight) are
# checked against SamplingParams' bounds (engine/sampling_params.py) as well.
_RANGES: dict[str, tuple[float, float]] = {
    "max_tokens": (1, 1024), "debounce_ms": (0, 5000), "neighbour_files": (0, 32), "context_tokens": (16, 1 << 17),
    "timeout_ms": (50, 120_000), "workspace_max_files": (0, 10_000_000), "workspace_max_megabytes": (0, 4096),
}
_BOOLS = {"enable", "multiline", "neighbours", "typed_ahead_reuse", "prefetch", "recent_chunks", "workspace_index"}
_STRINGS = {"remote_url", "api_key", "model", "fim_template"}
# What `backend` names: the server's HTTP dialect (lsp_server/remote.py maps each to its client).
BACKENDS = ("code-assistant", "openai", "llama.cpp", "ollama")
_INTS = {"max_tokens", "debounce_ms", "timeout_ms", "neighbour_files", "context_tokens", "workspace_max_files",
         "workspace_max_megabytes"}
_OPTIONAL = {"remote_url", "api_key", "cache_weight", "debounce_ms", "model", "fim_template"}


def _coerce(name: str, value: Any) -> Any:
    if value is None:
        return None if name in _OPTIONAL else _INVALID
    if name in _BOOLS:
        return value if isinstance(value, bool) else _INVALID
    if name in _STRINGS:
        return (value or None) if isinstance(value, str) else _INVALID
    if name == "backend":
        return value if value in BACKENDS else _INVALID
    if name == "exclude":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return tuple(v for v in value if v.strip()) if ok else _INVALID
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _INVALID
    if name in _INTS:
        if float(value) != int(value):
            return _INVALID
        value = int(value)
    else:
        value = float(value)
    if name in SAMPLING_BOUNDS and sampling_value_error(name, value) is not None:
        return _INVALID
    low, high = _RANGES.get(name, (-math.inf, math.inf))
    return value if low <= value <= high else _INVALID


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
