"""The `backend` setting: which HTTP dialect the server at `remoteUrl` speaks."""
from __future__ import annotations

from .llama_cpp import LlamaCppBackend
from .ollama import OllamaBackend
from .openai_compat import OpenAICompatibleBackend
from .remote import CodeAssistantBackend, HttpBackend
from .settings import Settings


def create_remote_backend(settings: Settings) -> HttpBackend:
    url, key, timeout = settings.remote_url, settings.api_key, settings.timeout_ms / 1000
    if settings.backend == "openai":
        return OpenAICompatibleBackend(url, key, timeout, settings.model, settings.fim_template)
    if settings.backend == "llama.cpp":
        return LlamaCppBackend(url, key, timeout, settings.model)
    if settings.backend == "ollama":
        return OllamaBackend(url, key, timeout, settings.model)
    return CodeAssistantBackend(url, key, timeout, settings.model)
