"""Pure pieces on their own: rate limiter, keys, job limits, caches; readiness through the ASGI app."""
from __future__ import annotations

import signal
import socket

import httpx
import pytest

from engine import CompletionInput, ContextFile, Engine, EngineConfig
from http_api import cli
from http_api.app import create_app, load_engine
from http_api.auth import KeyRing, key_id, load_api_keys
from http_api.errors import APIError
from http_api.jobs import completion_input
from http_api.rate_limit import RateLimiter
from http_api.response_cache import MemoryCache, RedisCache, cache_key
from http_api.schemas import CompletionRequest, ContextFileIn, SimpleCompleteRequest
from http_api.settings import ServerSettings


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_refills_continuously():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)  # one a second
    assert [limiter.acquire("a") for _ in range(60)] == [0.0] * 60
    wait = limiter.acquire("a")
    assert 0.9 < wait <= 1.0
    assert limiter.acquire("b") == 0.0  # buckets are per key
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0
    assert RateLimiter(0).acquire("a") == 0.0


def test_keys_from_file_and_list(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nalpha\n\n  beta  \n")
    assert load_api_keys(f, "gamma, ,delta") == {"alpha", "beta", "gamma", "delta"}
    ring = KeyRing(frozenset({"alpha"}))
    assert ring.authenticate("Bearer alpha") == key_id("alpha") and "alpha" not in key_id("alpha")
    for header in (None, "Bearer", "Bearer beta", "Token alpha"):
        with pytest.raises(APIError) as e:
            ring.authenticate(header)
        assert e.value.status == 401
    assert KeyRing(frozenset()).authenticate(None) is None
    with pytest.raises(ValueError):
        load_api_keys(tmp_path / "missing", "")


def test_a_request_becomes_one_completion_input_within_the_limits():
    settings = ServerSettings(max_prompt_chars=10, max_tokens_limit=100, max_extra_context_items=2,
                              max_extra_context_bytes=30)  # paths count too
    made = completion_input(settings, CompletionRequest(prompt="abc", suffix="def", max_tokens=5, temperature=0.0,
                                                        stop=["\n"], max_prompt_tokens=64), "abc")
    assert isinstance(made, CompletionInput) and made.params.max_tokens == 5 and made.suffix == "def"
    assert made.params.stop == ["\n"] and made.max_prompt_tokens == 64
    bad = [dict(max_tokens=0), dict(max_tokens=101), dict(temperature=2.5), dict(top_p=0.0),
           dict(max_prompt_tokens=0)]
    for fields in bad:
        with pytest.raises(APIError) as e:
            completion_input(settings, SimpleCompleteRequest(code="abc", **fields), "abc", prompt_param="code")
        assert e.value.status == 400 and e.value.param == next(iter(fields))
    with pytest.raises(APIError) as e:
        completion_input(settings, CompletionRequest(prompt="a" * 8, suffix="b" * 3), "a" * 8)
    assert e.value.status == 413
    files = [ContextFileIn(path="a.py", text="x" * 10)] * 2
    made = completion_input(settings, SimpleCompleteRequest(code="a", extra_context=files), "a")
    assert made.files == (ContextFile("a.py", "x" * 10),) * 2
    with pytest.raises(APIError) as e:
        completion_input(settings, SimpleCompleteRequest(code="a", extra_context=files * 2), "a")
    assert e.value.status == 400
    with pytest.raises(APIError) as e:
        completion_input(settings, SimpleCompleteRequest(code="a", extra_context=[ContextFileIn(path="a.py",
                                                                                                text="x" * 40)]), "a")
    assert e.value.status == 413


async def test_memory_cache_evicts_least_recently_used():
    cache = MemoryCache(max_entries=2)
    await cache.put("a", {"v": 1})
    await cache.put("b", {"v": 2})
    assert await cache.get("a") == {"v": 1}
    await cache.put("c", {"v": 3})
    assert await cache.get("b") is None and await cache.get("a") == {"v": 1}
    assert cache_key("m", "v1", {"prompt": "x"}) != cache_key("m", "v2", {"prompt": "x"})


async def test_unreachable_redis_is_a_cache_miss_not_an_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0")
    await cache.put("k", {"v": 1})
    assert await cache.get("k") is None
    await cache.close()


@pytest.fixture(scope="module")
def saturated_engine(tiny_model_dir):
    # A zero-length queue counts as full from the start.
    engine = Engine.load(tiny_model_dir, config=EngineConfig(max_batch=1, max_queue=0))
    yield engine
    engine.close()


async def test_ready_is_503_when_the_queue_is_saturated(saturated_engine):
    app = create_app(ServerSettings(), engine=saturated_engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get("/health")).json()["model_loaded"] is True
            r = await client.get("/ready")
            assert r.status_code == 503 and "queue saturated" in r.json()["reasons"]
            busy = await client.post("/complete", json={"code": "x", "max_tokens": 2})
            assert busy.status_code == 429 and busy.headers["retry-after"]
            assert busy.json()["error"]["code"] == "engine_busy"


async def test_ready_is_503_once_a_shutdown_signal_arrives(saturated_engine):
    app = create_app(ServerSettings(), engine=saturated_engine)
    server = cli.build_server(app, ServerSettings())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            server.handle_exit(signal.SIGTERM, None)
            r = await client.get("/ready")
            assert r.status_code == 503 and "shutting down" in r.json()["reasons"]
            assert server.should_exit


async def test_a_model_that_fails_to_load_is_not_ready_and_not_healthy(tmp_path):
    app = create_app(ServerSettings(model_dir=tmp_path / "no-such-model"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/health")).json()["status"] == "unhealthy"
            r = await client.post("/complete", json={"code": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"


def test_serve_refuses_a_bad_model_dir_or_keys_file_at_once(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["--model", str(tmp_path / "missing"), "--port", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["--model", str(tiny_model_dir), "--api-keys-file", str(tmp_path / "nope"), "--port", "1"]) == 2
    assert "API keys file" in capsys.readouterr().err


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("CODE_ASSISTANT_PORT", "9001")
    monkeypatch.setenv("CODE_ASSISTANT_RATE_LIMIT", "7")
    monkeypatch.setenv("CODE_ASSISTANT_API_KEYS", "k1,k2")
    settings = cli.settings_from_args(cli.build_parser().parse_args(["--port", "9002"]))
    assert (settings.port, settings.rate_limit, settings.host) == (9002, 7, "127.0.0.1")
    assert load_api_keys(settings.api_keys_file, settings.api_keys) == {"k1", "k2"}


def test_serve_passes_the_suffix_budget_to_the_engine(tiny_model_dir):
    settings = cli.settings_from_args(cli.build_parser().parse_args(["--model", str(tiny_model_dir),
                                                                     "--suffix-tokens", "24"]))
    engine = load_engine(settings)
    try:
        assert settings.suffix_tokens == 24 and engine.prompts.suffix_tokens == 24
    finally:
        engine.close()


def test_the_user_field_is_a_session_within_its_caller():
    settings = ServerSettings()
    def session_of(caller, **fields):
        return completion_input(settings, CompletionRequest(prompt="a", **fields), "a", caller=caller).session
    assert session_of("key-1", user="doc") == session_of("key-1", user="doc") != session_of("key-2", user="doc")
    assert session_of("key-1") is None and session_of("key-1", user="") is None
    assert completion_input(settings, SimpleCompleteRequest(code="a", user="doc"), "a", caller="key-1").session \
        == session_of("key-1", user="doc")
