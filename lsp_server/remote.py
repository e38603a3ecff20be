"""Remote backends: a server the team already runs does the generation; the editor stays light.

`HttpBackend` holds what every HTTP dialect shares (the client, the bearer key, the prompt budget
from the server's context length, failures turned into empty completions); each dialect maps a
`Prompt` to its request and its response to text:

- `code-assistant` (this module): `code-assistant serve`'s /v1/completions with `suffix`,
  `extra_context`, `max_prompt_tokens`, a `user` per document and /v1/events;
- `openai` (openai_compat.py): any OpenAI-compatible /v1/completions (vLLM, TGI, LM Studio);
- `llama.cpp` (llama_cpp.py): llama-server's /infill with `input_extra`;
- `ollama` (ollama.py): /api/generate with `suffix`.

A server that is down, slow or answers garbage gives an empty completion within the timeout and a
log line; the editor never hangs on it.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any, Callable

import httpx

from engine.inputs import ContextFile
from engine.prompt import comment_marker, files_room, prompt_budget, render_comment, suffix_room

from .completer import Generated, GenerationParams
from .context import Prompt, keep_first_lines, keep_last_lines

log = logging.getLogger(__name__)

# When the server does not say its context length (an older server, a proxy that hides it).
FALLBACK_CONTEXT_TOKENS = 1024
# The prompt's tokens are estimated from its characters (the server's tokenizer is not here): keep
# a margin so that an estimate on the low side still fits.
ESTIMATE_MARGIN = 0.9
MIN_ESTIMATED_BUDGET = 16
DISCOVERY_TIMEOUT_S = 2.0


# Servers other than code-assistant take the prompt as text and count it with their own tokenizer,
# which is not here: it is fitted by an estimate (code BPE averages three to four characters a
# token), so the prefix cannot overflow their context.
CHARS_PER_TOKEN_ESTIMATE = 3


def fit_text(prompt: Prompt, budget_tokens: int,
             file_chars: Callable[[ContextFile], int]) -> tuple[list[ContextFile], str, str]:
    """(files, prefix, suffix) of `prompt` within `budget_tokens` by the estimate, shared out as
    engine/prompt.py shares a prompt: whole files in their room (`file_chars` measures one as it
    will be sent), then the suffix's room, and the prefix the rest."""
    chars = budget_tokens * CHARS_PER_TOKEN_ESTIMATE
    files: list[ContextFile] = []
    used = 0
    for file in prompt.files:
        if used + file_chars(file) > files_room(chars):
            break
        files.append(file)
        used += file_chars(file)
    room = chars - used
    suffix = prompt.suffix or ""
    suffix = keep_first_lines(suffix, suffix_room(len(prompt.prefix), len(suffix), room))
    return files, keep_last_lines(prompt.prefix, room - len(suffix)), suffix


def text_prompt(prompt: Prompt, budget_tokens: int) -> tuple[str, str]:
    """(prefix, suffix) for a server that takes no neighbouring files: the snippets as comments
    opening the prefix (as engine/prompt.py lays them out for families without repository
    tokens), the whole within `budget_tokens` by the estimate."""
    marker = comment_marker(prompt.path)
    files, prefix, suffix = fit_text(prompt, budget_tokens, lambda file: len(render_comment(file, marker)))
    return "".join(render_comment(file, marker) for file in files) + prefix, suffix


class RemoteError(Exception):
    """The server's answer is not what its API documents."""


class HttpBackend:
    name = "http"

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 5.0, model: str | None = None):
        self.url = url.rstrip("/")
        self.model = model  # None: the server's own (or first) model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)
        self.discovery_timeout_s = min(timeout_s, DISCOVERY_TIMEOUT_S)
        self.context_tokens: int | None = None  # from the server, once `discover` has asked

    def prompt_budget(self, max_tokens: int) -> int:
        """The server's budget (engine/prompt.py's, on its context length) less the estimate's margin."""
        budget = prompt_budget(self.context_tokens or FALLBACK_CONTEXT_TOKENS, max_tokens)
        return max(MIN_ESTIMATED_BUDGET, int(budget * ESTIMATE_MARGIN))

    async def discover(self) -> None:
        """Ask the server for its context length (and model); failures leave the fallbacks."""
        try:
            self.context_tokens = await self.context_length()
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, RemoteError) as error:
            log.info("%s at %s did not say its context length (%s); assuming %d tokens", self.name, self.url,
                     _describe(error), FALLBACK_CONTEXT_TOKENS)
        if self.context_tokens is not None:
            log.info("%s at %s: context %d tokens", self.name, self.url, self.context_tokens)

    async def context_length(self) -> int | None:
        return None

    async def generate(self, prompt: Prompt, params: GenerationParams, done: Callable[[str], bool]) -> Generated:
        try:
            return await self.request(prompt, params)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, RemoteError) as error:
            log.warning("remote completion failed (%s %s): %s", self.name, self.url, _describe(error))
            return Generated("", "")

    async def request(self, prompt: Prompt, params: GenerationParams) -> Generated:
        raise NotImplementedError

    async def post_json(self, path: str, body: dict, discovery: bool = False) -> Any:
        response = await self.client.post(path, json=body,
                                          **({"timeout": self.discovery_timeout_s} if discovery else {}))
        response.raise_for_status()
        return response.json()

    async def get_json(self, path: str) -> Any:
        response = await self.client.get(path, timeout=self.discovery_timeout_s)
        response.raise_for_status()
        return response.json()

    async def send_event(self, completion_id: str, event: str, language: str) -> None:
        return None

    async def close(self) -> None:
        await self.client.aclose()


def models_context_length(payload: Any, model: str | None) -> int | None:
    """The context length in an OpenAI-style /v1/models answer: `context_length` (code-assistant
    serve), `max_model_len` (vLLM) or `max_context_length` (LM Studio), of `model` or the first."""
    entries = payload["data"]
    entry = next((e for e in entries if model and e.get("id") == model), entries[0] if entries else {})
    for key in ("context_length", "max_model_len", "max_context_length"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def text_of_choice(payload: Any) -> tuple[str, str]:
    """(id, text) of an OpenAI-style completion answer."""
    text = payload["choices"][0]["text"]
    if not isinstance(text, str):
        raise RemoteError("choices[0].text is not a string")
    return str(payload.get("id") or uuid.uuid4().hex), text


class CodeAssistantBackend(HttpBackend):
    """`code-assistant serve`: FIM through `suffix`, the cache model's `extra_context`, and events.
    Each document's requests carry one `user`, so the server drops a document's older completion
    as soon as the next one comes (this process already gave up on it)."""

    name = "code-assistant"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.editor_id = uuid.uuid4().hex[:12]  # this editor: another's documents never share a `user`

    def document_user(self, path: str) -> str:
        """A stable id of one document of this editor; opaque, so the path stays here."""
        return f"{self.editor_id}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"

    async def context_length(self) -> int | None:
        return models_context_length(await self.get_json("/v1/models"), self.model)

    def prompt_budget(self, max_tokens: int) -> int:
        # The server counts tokens with the model's own tokenizer: no estimate, no margin.
        return prompt_budget(self.context_tokens or FALLBACK_CONTEXT_TOKENS, max_tokens)

    async def request(self, prompt: Prompt, params: GenerationParams) -> Generated:
        body: dict[str, Any] = {"prompt": prompt.prefix, "suffix": prompt.suffix, "max_tokens": params.max_tokens,
                                "temperature": float(params.temperature)}
        if self.model:
            body["model"] = self.model
        if prompt.path is not None:
            body["user"] = self.document_user(prompt.path)
        if prompt.files:  # best first: the server puts what fits into the prompt, all into its cache model
            body["extra_context"] = [{"path": file.path, "text": file.text} for file in prompt.files]
        if params.max_prompt_tokens is not None:  # contextTokens, as the engine in this process would take it
            body["max_prompt_tokens"] = params.max_prompt_tokens
        if not params.multiline:
            body["stop"] = ["\n"]
        if params.cache_weight is not None:
            body["cache_weight"] = params.cache_weight
        completion_id, text = text_of_choice(await self.post_json("/v1/completions", body))
        return Generated(completion_id, text)

    async def send_event(self, completion_id: str, event: str, language: str) -> None:
        body = {"id": completion_id, "event": event, "language": language}
        if self.model:
            body["model"] = self.model
        try:
            (await self.client.post("/v1/events", json=body)).raise_for_status()
        except httpx.HTTPError as error:
            log.warning("remote event %s failed (%s): %s", event, self.url, _describe(error))


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
