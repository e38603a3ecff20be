"""ServerSettings: every knob of the HTTP server in one place (flags override environment variables)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CODE_ASSISTANT_", extra="ignore", protected_namespaces=())

    model_dir: Path | None = Field(None, description="model directory; None = the engine's default model")
    host: str = "127.0.0.1"        # loopback unless told otherwise: users' code is private
    port: int = 8000
    device: str = "cpu"
    quantize: str | None = None    # "int8" | "int4" | "none"; None: the engine's default
    max_batch: int = 32
    max_queue: int = 256
    # The longest a completion may wait for a batch slot before it is shed with 429 (at submit when
    # the queue's measured pace says it would wait longer; engine/overload.py). An editor asks
    # again at the user's next pause (~1 s while typing): an answer that waited longer is usually
    # stale, and waiting for it would only make the requests behind it late too. 0: wait.
    max_queue_wait_ms: float = Field(500.0, ge=0)
    draft_tokens: int = 8          # speculative decoding from the context (engine/draft.py); 0: off
    # Prompt tokens a request may use at most (0: the model's whole context): bounds prefill time
    # for models with long contexts (EngineConfig.context_tokens).
    context_tokens: int = Field(0, ge=0)
    # Suffix tokens a prompt keeps at most (0: what the machine prefills in time; EngineConfig.suffix_tokens).
    suffix_tokens: int = Field(0, ge=0)

    api_keys_file: Path | None = None
    api_keys: str = ""             # CODE_ASSISTANT_API_KEYS: comma-separated
    rate_limit: int = 0            # requests per minute per key; 0 = unlimited

    redis_url: str | None = None   # shared response cache across replicas; in-memory otherwise
    response_cache_size: int = 1024
    response_cache_ttl_s: int = 3600

    debug_log_code: bool = False   # log prompts and completions (never on by default)
    log_level: str = "info"

    # Limits that keep one request from hogging the server; over them is a 4xx, never a 500.
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 64_000
    max_tokens_limit: int = 2048
    max_extra_context_items: int = 8
    max_extra_context_bytes: int = 64 * 1024

    # Slow or too many clients (see connection_guard.py): a request's headers must arrive within
    # header_timeout_s, its body within body_timeout_s after them; connections beyond
    # max_connections_per_client from one address get a 503 at once, and at max_connections an
    # idle connection of the busiest address makes room for another address's.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = Field(1000, ge=1)
    max_connections_per_client: int = Field(100, ge=1)  # behind a proxy every client shares its address: raise it

    drain_timeout_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish

    # The team's repository as context for every request (engine/workspace.py): folders, or one
    # index file from `code-assistant index`; rescanned for changed files every workspace_rescan_s.
    workspace: list[Path] = Field(default_factory=list)
    workspace_rescan_s: float = 30.0
    workspace_max_megabytes: int = 32
    workspace_exclude: list[str] = Field(default_factory=list)  # globs beyond the rules of docs/privacy.md
    stop_loops: bool = True        # the engine's loop guard (engine/repetition.py); off: the raw text
    model_version: str | None = None  # overrides the version derived from the model directory
