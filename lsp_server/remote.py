"""The remote backend: a shared `code-assistant serve` does the generation; the editor stays light.

A server that is down, slow or answers garbage gives an empty completion within the timeout and a
log line; the editor never hangs on it.
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable

import httpx

from .completer import Generated, GenerationParams, extra_context
from .context import Prompt

log = logging.getLogger(__name__)

# Without the server's model config the prompt budget is a guess; the server trims what is over.
DEFAULT_PROMPT_TOKENS = 1024


class RemoteBackend:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 5.0, model: str | None = None):
        self.url = url.rstrip("/")
        self.model = model  # None: the server's own model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    def prompt_budget(self, max_tokens: int) -> int:
        return DEFAULT_PROMPT_TOKENS - max_tokens

    async def generate(self, prompt: Prompt, params: GenerationParams, done: Callable[[str], bool]) -> Generated:
        body = {"prompt": prompt.prefix, "suffix": prompt.suffix, "max_tokens": params.max_tokens,
                "temperature": float(params.temperature)}
        if self.model:
            body["model"] = self.model
        context = extra_context(prompt)
        if context:
            body["extra_context"] = context
        if not params.multiline:
            body["stop"] = ["\n"]
        if params.cache_weight is not None:
            body["cache_weight"] = params.cache_weight
        try:
            response = await self.client.post("/v1/completions", json=body)
            response.raise_for_status()
            payload = response.json()
            return Generated(str(payload.get("id") or uuid.uuid4().hex), str(payload["choices"][0]["text"]))
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            log.warning("remote completion failed (%s): %s", self.url, _describe(error))
            return Generated("", "")

    async def send_event(self, completion_id: str, event: str, language: str) -> None:
        body = {"id": completion_id, "event": event, "language": language}
        if self.model:
            body["model"] = self.model
        try:
            (await self.client.post("/v1/events", json=body)).raise_for_status()
        except httpx.HTTPError as error:
            log.warning("remote event %s failed (%s): %s", event, self.url, _describe(error))

    async def close(self) -> None:
        await self.client.aclose()


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
