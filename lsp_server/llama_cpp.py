"""llama.cpp's llama-server through /infill (backend `llama.cpp`), as llama.vim and llama.vscode use it.

The FIM layout is the server's (it knows the model's tokens); neighbour snippets and recent chunks go
in `input_extra`, which the server puts before the FIM prefix (in the repo-level layout when the
model has those tokens) and keeps in its KV cache with `cache_prompt`. The cursor's line goes in
`prompt` (after the FIM middle token): while the user types on a line, `input_prefix` stays the same
and the server reuses all of it.
"""
from __future__ import annotations

import uuid
from typing import Any

from .completer import Generated, GenerationParams
from .context import Prompt
from .remote import HttpBackend, RemoteError, fit_text


class LlamaCppBackend(HttpBackend):
    name = "llama.cpp"

    async def context_length(self) -> int | None:
        props = await self.get_json("/props")
        n_ctx = props["default_generation_settings"]["n_ctx"]
        return int(n_ctx) if int(n_ctx) > 0 else None

    async def request(self, prompt: Prompt, params: GenerationParams) -> Generated:
        # /infill has no prompt limit of its own (it cuts to its context): the prompt budget is
        # kept here, by the estimate.
        budget = params.max_prompt_tokens or self.prompt_budget(params.max_tokens)
        files, prefix, suffix = fit_text(prompt, budget, lambda file: len(file.path) + len(file.text))
        line_start = prefix.rfind("\n") + 1
        body: dict[str, Any] = {
            "input_prefix": prefix[:line_start], "prompt": prefix[line_start:], "input_suffix": suffix,
            "input_extra": [{"filename": file.path, "text": file.text} for file in files],
            "n_predict": params.max_tokens, "temperature": float(params.temperature),
            "stream": False, "cache_prompt": True,
        }
        if not params.multiline:
            body["stop"] = ["\n"]
        payload = await self.post_json("/infill", body)
        text = payload["content"]
        if not isinstance(text, str):
            raise RemoteError("content is not a string")
        return Generated(f"llama-{uuid.uuid4().hex[:16]}", text)
