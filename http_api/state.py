"""What one running server holds: settings, metrics, keys, limiter, cache and (once loaded) the engine."""
from __future__ import annotations

from dataclasses import dataclass

from .auth import KeyRing
from .generation import CompletionService
from .metrics import Metrics
from .rate_limit import RateLimiter
from .response_cache import ResponseCache
from .settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: Metrics
    keyring: KeyRing
    limiter: RateLimiter
    cache: ResponseCache | None
    service: CompletionService | None = None   # None until the model is loaded
    load_error: str | None = None
    draining: bool = False                     # SIGTERM received: finishing in-flight work

    @property
    def model(self) -> str:
        return self.service.model if self.service else "none"

    @property
    def version(self) -> str:
        return self.service.version if self.service else "none"
