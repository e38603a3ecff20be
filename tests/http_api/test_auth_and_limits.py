"""API keys (file and environment), per-key rate limit, and a full queue: 401 and 429 in OpenAI's shape."""
from __future__ import annotations

import asyncio
import time

import httpx


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_key_is_401(guarded_server):
    url = guarded_server.url
    for headers in ({}, bearer("nope"), {"Authorization": "Basic abc"}):
        r = httpx.post(url + "/complete", json={"code": "x", "max_tokens": 2}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.post(url + "/v1/events", json={"id": "c", "event": "shown"}).status_code == 401


def test_health_ready_metrics_stay_open(guarded_server):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(guarded_server.url + path).status_code == 200


def test_keys_from_file_and_environment_work(guarded_server):
    for key in ("key-file-check", "key-env-check"):
        r = httpx.get(guarded_server.url + "/v1/models", headers=bearer(key))
        assert r.status_code == 200, key


def test_per_key_rate_limit_answers_429_with_retry_after(guarded_server, api_keys):
    url, key = guarded_server.url, api_keys[0]
    codes = []
    for _ in range(7):
        r = httpx.post(url + "/complete", json={"code": "x", "max_tokens": 2}, headers=bearer(key))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    # Another key has its own budget.
    assert httpx.post(url + "/complete", json={"code": "x", "max_tokens": 2},
                      headers=bearer(api_keys[3])).status_code == 200


async def test_full_queue_answers_429_quickly(guarded_server, api_keys):
    # One batch slot and a one-request queue: of five simultaneous long requests, some must be turned away.
    # Greedy, so each runs its full 120 tokens (sampling may end one early and free the slot).
    async with httpx.AsyncClient(base_url=guarded_server.url, timeout=60, headers=bearer(api_keys[1])) as client:
        async def one() -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            r = await client.post("/complete", json={"code": "def ", "max_tokens": 120, "temperature": 0})
            return r, time.perf_counter() - started

        results = await asyncio.gather(*(one() for _ in range(5)))
    busy = [(r, t) for r, t in results if r.status_code == 429]
    assert {r.status_code for r, _ in results} <= {200, 429}
    assert busy, [r.status_code for r, _ in results]
    for r, elapsed in busy:
        assert r.json()["error"]["code"] == "engine_busy" and r.headers["retry-after"]
        assert elapsed < 2.0
    assert '"status": 429' in guarded_server.log()


def test_logs_name_the_key_id_never_the_key(guarded_server, api_keys):
    log = guarded_server.log()
    assert '"key_id"' in log
    for key in api_keys:
        assert key not in log
