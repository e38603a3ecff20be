"""create_app(settings, engine=None): the FastAPI app. Without an engine it loads one from
settings.model_dir in the background, so /health answers at once and /ready turns 200 when loaded."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from engine import Engine, EngineConfig
from engine.hub import resolve_model
from engine.model_dir import CONFIG_FILE, default_model_dir

from .auth import KeyRing, load_api_keys
from .errors import install_error_handlers
from .generation import CompletionService
from .metrics import Metrics
from .middleware import RequestObserver
from .openapi import install_openapi
from .rate_limit import RateLimiter
from .response_cache import make_response_cache
from .routes import completions, events, health, models, simple
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger("code_assistant.http")

# What a newcomer who ran `make serve` must know before judging the suggestions (README, first screen).
SHIPPED_MODEL_NOTE = ("this is the shipped 3.35 M-parameter demonstration model, trained on 2 CPU cores: expect "
                      "short, often empty suggestions. For real completions serve a code model: code-assistant serve "
                      "--model Qwen/Qwen2.5-Coder-0.5B (a Hugging Face name, a .gguf file or an Ollama name)")


def model_version(model_dir: Path | None) -> str:
    """A version that changes whenever the weights or config change: `version` from config.json if the
    model directory records one, else the first 12 hex digits of a hash of config and weights."""
    if model_dir is None or not (model_dir / CONFIG_FILE).is_file():
        return "unknown"
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    if isinstance(config.get("version"), str):
        return config["version"]
    digest = hashlib.sha256((model_dir / CONFIG_FILE).read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):  # one file, or the shards
        with open(weights, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:12]


def load_engine(settings: ServerSettings) -> Engine:
    quantize = {} if settings.quantize is None else {"quantize": settings.quantize}
    return Engine.load(settings.model_dir, device=settings.device,
                       config=EngineConfig(max_batch=settings.max_batch, max_queue=settings.max_queue,
                                           max_queue_wait_ms=settings.max_queue_wait_ms,
                                           stop_loops=settings.stop_loops, draft_tokens=settings.draft_tokens,
                                           context_tokens=settings.context_tokens,
                                           suffix_tokens=settings.suffix_tokens),
                       **quantize)


def create_app(settings: ServerSettings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    holder: dict[str, ServerState] = {}
    metrics = Metrics(lambda: holder["state"].service.engine if holder["state"].service else None)
    state = ServerState(settings, metrics, KeyRing(load_api_keys(settings.api_keys_file, settings.api_keys)),
                        RateLimiter(settings.rate_limit), None)
    holder["state"] = state
    model_dir = settings.model_dir or default_model_dir()

    def serve(loaded: Engine) -> None:
        # the directory the engine read: a hub name, a GGUF file or an Ollama name resolved
        version = settings.model_version or model_version(resolve_model(model_dir))
        state.service = CompletionService(loaded, state.cache, metrics, loaded.model_name, version)
        metrics.model_info.labels(loaded.model_name, version).set(1)
        if settings.workspace:
            from project_files.indexing import WorkspaceService
            from project_files.walk import WalkSettings

            holder["workspace"] = WorkspaceService(
                loaded, settings.workspace, tuple(settings.workspace_exclude),
                WalkSettings(max_total_bytes=settings.workspace_max_megabytes << 20), settings.workspace_rescan_s).start()
        path = loaded.decode_path
        log.info("model loaded", extra={"fields": {"event": "model_loaded", "model": loaded.model_name,
                                                   "version": version, "device": settings.device, "weights": loaded.weights,
                                                   "kernels": path["kernels"], "kernels_reason": path["reason"],
                                                   **loaded.budgets}})
        if version == model_version(default_model_dir()):
            log.warning(SHIPPED_MODEL_NOTE, extra={"fields": {"event": "shipped_model", "note": SHIPPED_MODEL_NOTE}})

    def load_in_background() -> None:
        try:
            serve(load_engine(settings))
        except Exception as e:  # noqa: BLE001 - reported by /health and /ready, not a crash
            state.load_error = f"{type(e).__name__}: {e}"
            log.error("model load failed", extra={"fields": {"event": "model_load_failed", "error": state.load_error}})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.cache = make_response_cache(settings.redis_url, settings.response_cache_size,
                                          settings.response_cache_ttl_s)
        loading = None
        if engine is not None:
            serve(engine)
        else:
            loading = asyncio.get_running_loop().run_in_executor(None, load_in_background)
        try:
            yield
        finally:
            state.draining = True
            if "workspace" in holder:
                holder["workspace"].stop()
            if loading is not None:
                await loading
            if engine is None and state.service is not None:
                state.service.engine.close()  # we loaded it, we close it; a caller's engine is theirs
            if state.cache is not None:
                await state.cache.close()

    # No trailing-slash redirects: Starlette builds their Location from the client's Host header.
    app = FastAPI(title="code-assistant", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    install_openapi(app, settings)
    app.state.server = state
    install_error_handlers(app)
    for module in (completions, simple, events, models, health):
        app.include_router(module.router)
    app.add_middleware(RequestObserver, get_state=lambda: state)
    return app
