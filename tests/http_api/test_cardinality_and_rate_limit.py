"""Whatever clients send, /metrics stays bounded; the rate limit covers every route that costs work
and failed authentication too."""
from __future__ import annotations

import asyncio
import random
import string

import httpx
import pytest

KEY = "key-cardinality"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def event_series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("completion_events_total{")]


async def send_events(url: str, bodies: list[dict]) -> list[int]:
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(8)

        async def one(body: dict) -> int:
            async with semaphore:
                return (await client.post("/v1/events", json=body)).status_code

        return await asyncio.gather(*(one(b) for b in bodies))


async def test_metric_series_stay_bounded_whatever_models_and_languages_clients_send(server):
    rng = random.Random(0)

    def word(n: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))

    bodies = [{"id": f"cmpl-{i}", "event": rng.choice(["shown", "accepted", "dismissed"]),
               "language": word(8), "model": word(12)} for i in range(2000)]
    bodies += [{"id": "cmpl-py", "event": "shown", "language": "Python"},
               {"id": "cmpl-served", "event": "accepted", "language": "rust", "model": "code-assistant"}]
    assert set(await send_events(server.url, bodies)) == {200}
    text = httpx.get(server.url + "/metrics").text
    series = event_series(text)
    assert len(series) <= 3 * 2 * 3 + 10, len(series)  # far below the 2,000 label values sent
    assert any('language="other"' in s and 'model="other"' in s for s in series)
    served = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    assert any('language="python"' in s and f'model="{served}"' in s for s in series)
    assert any('language="rust"' in s and 'event="accepted"' in s and f'model="{served}"' in s for s in series)
    assert len(text.encode()) < 64_000


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir, tmp_path_factory):
    from .conftest import ServerProcess

    tmp = tmp_path_factory.mktemp("limited")
    keys = tmp / "keys.txt"
    keys.write_text(KEY + "\n")
    proc = ServerProcess(tiny_model_dir, tmp / "server.log", "--api-keys-file", str(keys), "--rate-limit", "5")
    yield proc
    proc.stop()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/events", {"id": "cmpl-1", "event": "shown", "language": "python"}),
    ("GET", "/v1/models", None),
], ids=["events", "models"])
def test_every_route_that_costs_work_is_rate_limited(limited_server, method, path, body):
    key = f"{KEY}"
    codes = []
    with httpx.Client(base_url=limited_server.url, headers=bearer(key), timeout=10) as client:
        for _ in range(30):
            r = client.request(method, path, json=body)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limit_exceeded"
        # The probes stay open whatever the budget.
        assert {client.get(p).status_code for p in ("/health", "/ready", "/metrics")} == {200}
    assert codes.count(200) <= 5 and codes.count(429) >= 25, codes


def test_failed_authentication_is_rate_limited_per_client(limited_server):
    codes = [httpx.post(limited_server.url + "/complete", json={"code": "x", "max_tokens": 2},
                        headers=bearer(f"guess-{i}"), timeout=10).status_code for i in range(30)]
    assert codes[:5] == [401] * 5 and codes.count(429) >= 24, codes
