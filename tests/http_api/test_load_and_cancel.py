"""Concurrency (100 simultaneous requests) and cancellation (a client gone mid-stream frees its slot)."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest


async def test_one_hundred_simultaneous_requests_all_succeed(server):
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as client:
        async def one(i: int) -> httpx.Response:
            if i % 2:
                return await client.post("/complete", json={"code": f"def f{i}(", "max_tokens": 16})
            return await client.post("/v1/completions", json={"prompt": f"x{i} = ", "max_tokens": 16,
                                                              "temperature": 0.5, "seed": i})

        responses = await asyncio.gather(*(one(i) for i in range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 100


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_mid_stream_cancels_the_generation(server):
    assert wait_until(lambda: server.metric("active_requests") == 0)
    tokens_before = server.metric("tokens_generated_total")
    # Greedy decoding of the random long model runs to the full 1000 tokens (about a second on two
    # cores); sampling could hit an end-of-text token early and prove nothing.
    max_tokens = 1000
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": "def ", "max_tokens": max_tokens,
                                                            "temperature": 0, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
            assert server.metric("engine_running_batch_size") == 1
        # Leaving the block closes the connection mid-stream.
    assert wait_until(lambda: server.metric("active_requests") == 0
                      and server.metric("engine_running_batch_size") == 0), "the request still holds its slot"
    generated = server.metric("tokens_generated_total") - tokens_before
    assert generated < max_tokens / 2, f"{generated} tokens generated after the client left"
    # The freed slot serves the next request; and the same request left alone runs (nearly) to the end,
    # so the count above is the cancellation's doing (cancelled streams are not response-cached).
    control = httpx.post(server.url + "/v1/completions", json={"prompt": "def ", "max_tokens": max_tokens,
                                                               "temperature": 0}, timeout=60)
    assert control.status_code == 200
    assert control.json()["usage"]["completion_tokens"] > 0.9 * max_tokens


def test_hanging_up_on_a_non_streamed_request_cancels_it(long_model_dir, start_server):
    # Without speculative decoding: a random model's loops are drafted nine tokens a step, and the
    # whole generation would be done before the hang-up could be noticed.
    server = start_server(long_model_dir, "--no-stop-loops", "--draft-tokens", "0")
    assert wait_until(lambda: server.metric("active_requests") == 0)
    tokens_before = server.metric("tokens_generated_total")
    closed_before = server.metric("code_completion_requests_total", status="499")
    max_tokens = 2000
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(server.url + "/complete", json={"code": "def ", "max_tokens": max_tokens, "temperature": 0},
                   timeout=httpx.Timeout(10, read=0.2))
    assert wait_until(lambda: server.metric("active_requests") == 0
                      and server.metric("engine_running_batch_size") == 0), "the request still holds its slot"
    assert server.metric("tokens_generated_total") - tokens_before < max_tokens / 2
    assert server.metric("code_completion_requests_total", status="499") == closed_before + 1
    control = httpx.post(server.url + "/complete", json={"code": "def ", "max_tokens": max_tokens,
                                                         "temperature": 0}, timeout=120)
    assert control.json()["tokens"] > 0.9 * max_tokens  # left alone, the same request runs to the end  # left alone, the same request runs to the end
