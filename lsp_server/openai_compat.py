"""An OpenAI-compatible /v1/completions server: vLLM, TGI, LM Studio, llama-server's /v1 (backend `openai`).

Such servers differ in how they take fill-in-the-middle: OpenAI's API has a `suffix` field, but vLLM
and TGI ignore or reject it, and expect the model's FIM tokens written into `prompt`. `fim_template`
names the model family's layout (engine/prompt.py's FIM_TEXT_TEMPLATES) or gives one with `{prefix}`
and `{suffix}`; without it the request uses `suffix`.
"""
from __future__ import annotations

from typing import Any

from engine.prompt import FIM_TEXT_TEMPLATES

from .completer import Generated, GenerationParams
from .context import Prompt
from .remote import HttpBackend, RemoteError, models_context_length, text_of_choice, text_prompt

def fim_layout(template: str | None) -> str | None:
    if template is None:
        return None
    layout = FIM_TEXT_TEMPLATES.get(template, template)
    if "{prefix}" not in layout or "{suffix}" not in layout:
        raise RemoteError(f"fimTemplate {template!r} is neither a known name ({', '.join(FIM_TEXT_TEMPLATES)}) "
                          "nor a layout with {prefix} and {suffix}")
    return layout


class OpenAICompatibleBackend(HttpBackend):
    name = "openai"

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 5.0, model: str | None = None,
                 fim_template: str | None = None):
        super().__init__(url, api_key, timeout_s, model)
        self.layout = fim_layout(fim_template)

    async def context_length(self) -> int | None:
        payload = await self.get_json("/v1/models")
        if self.model is None and payload.get("data"):
            self.model = str(payload["data"][0]["id"])  # vLLM and TGI want the name they serve
        return models_context_length(payload, self.model)

    async def request(self, prompt: Prompt, params: GenerationParams) -> Generated:
        body: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": float(params.temperature),
                                "stream": False}
        prefix, suffix = text_prompt(prompt, params.max_prompt_tokens or self.prompt_budget(params.max_tokens))
        if self.layout is None:
            body.update(prompt=prefix, suffix=suffix)
        else:
            body["prompt"] = self.layout.replace("{prefix}", prefix).replace("{suffix}", suffix)
        if self.model:
            body["model"] = self.model
        if not params.multiline:
            body["stop"] = ["\n"]
        completion_id, text = text_of_choice(await self.post_json("/v1/completions", body))
        return Generated(completion_id, text)
