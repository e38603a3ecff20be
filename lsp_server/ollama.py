"""Ollama through /api/generate with `suffix` (backend `ollama`): Ollama fills in the model's FIM
template itself. `model` is required (Ollama serves many); the context window is asked for in the
request (`num_ctx`), since Ollama's default is smaller than most code models' and it silently cuts
a longer prompt.
"""
from __future__ import annotations

import uuid
from typing import Any

from .completer import Generated, GenerationParams
from .context import Prompt
from .remote import HttpBackend, RemoteError, text_prompt

# What Ollama's own default allows and a laptop's memory holds for a small code model.
MAX_CONTEXT_TOKENS = 4096


class OllamaBackend(HttpBackend):
    name = "ollama"

    async def context_length(self) -> int | None:
        if not self.model:
            raise RemoteError("the ollama backend needs the model setting (e.g. qwen2.5-coder:1.5b)")
        info = (await self.post_json("/api/show", {"model": self.model}, discovery=True))["model_info"]
        lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
        return min(lengths[0], MAX_CONTEXT_TOKENS) if lengths else None

    async def request(self, prompt: Prompt, params: GenerationParams) -> Generated:
        if not self.model:
            raise RemoteError("the ollama backend needs the model setting (e.g. qwen2.5-coder:1.5b)")
        options: dict[str, Any] = {"num_predict": params.max_tokens, "temperature": float(params.temperature)}
        if self.context_tokens:
            options["num_ctx"] = self.context_tokens
        if not params.multiline:
            options["stop"] = ["\n"]
        prefix, suffix = text_prompt(prompt, params.max_prompt_tokens or self.prompt_budget(params.max_tokens))
        body = {"model": self.model, "prompt": prefix, "suffix": suffix, "stream": False, "options": options}
        payload = await self.post_json("/api/generate", body)
        text = payload["response"]
        if not isinstance(text, str):
            raise RemoteError("response is not a string")
        return Generated(f"ollama-{uuid.uuid4().hex[:16]}", text)
