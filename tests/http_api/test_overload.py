"""Overload through the real server: a newer request with the same `user` supersedes the older one
(409 `superseded`, or an error event mid-stream), and a request the queue would not start within
--max-queue-wait-ms is answered 429 with an honest Retry-After, streamed or not, at once."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

# One batch slot, held by a long greedy generation of the random long model (no loop guard, no
# drafts: it runs to max_tokens, about a second), so that the requests after it wait.
RUNS_TO_MAX_TOKENS = ("--no-stop-loops", "--draft-tokens", "0", "--no-response-cache")
ONE_SLOT = (*RUNS_TO_MAX_TOKENS, "--max-batch", "1")
HOLD = {"code": "def ", "max_tokens": 1500, "temperature": 0}


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        await asyncio.sleep(0.02)


def completion(prompt: str, user: str | None = None, stream: bool = False, max_tokens: int = 4) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    return body if user is None else {**body, "user": user}


async def post(client: httpx.AsyncClient, body: dict) -> tuple[int, dict, list[str]]:
    """(status, headers, the body's lines) of a completion, streamed or not."""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line]
        return response.status_code, dict(response.headers), lines


async def test_a_newer_request_of_the_same_user_supersedes_the_waiting_one_and_no_other(long_model_dir,
                                                                                        start_server):
    server = start_server(long_model_dir, *ONE_SLOT, "--max-queue-wait-ms", "0")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        hold = asyncio.create_task(client.post("/complete", json=HOLD))
        await wait_for(lambda: server.metric("engine_running_batch_size") == 1)
        streamed = asyncio.create_task(post(client, completion("a = ", "doc-1", stream=True)))
        plain = asyncio.create_task(post(client, completion("b = ", "doc-2")))
        other = asyncio.create_task(post(client, completion("c = ", "doc-3")))
        await wait_for(lambda: server.metric("engine_queue_depth") == 3)
        newer = [asyncio.create_task(post(client, completion(p, user))) for p, user in (("a = 1", "doc-1"),
                                                                                      ("b = 2", "doc-2"))]
        for superseded in (streamed, plain):  # answered at once, while the slot is still held
            status, headers, lines = await asyncio.wait_for(superseded, 10)
            assert status == 409 and headers["x-should-retry"] == "false"
            assert json.loads(lines[0])["error"]["code"] == "superseded"
        assert not hold.done()
        results = await asyncio.gather(other, *newer)
        assert [status for status, _, _ in results] == [200, 200, 200]
        assert (await hold).status_code == 200
    assert server.metric("engine_requests_superseded_total") == 2
    assert server.metric("code_completion_requests_total", status="409") == 2


async def test_a_stream_superseded_midway_ends_with_an_error_event_and_no_done(long_model_dir, start_server):
    server = start_server(long_model_dir, *RUNS_TO_MAX_TOKENS, "--max-batch", "2")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/completions",
                                 json=completion("def ", "doc-1", stream=True, max_tokens=1500)) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = await anext(line async for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
            newer = await client.post("/v1/completions", json=completion("def f", "doc-1"))
            rest = [line async for line in lines if line.startswith("data: ")]
    assert newer.status_code == 200
    assert json.loads(rest[-1][6:])["error"]["code"] == "superseded"
    assert "data: [DONE]" not in rest
    assert server.metric("engine_requests_superseded_total") == 1


async def test_a_newer_request_answered_from_the_response_cache_still_supersedes(long_model_dir, start_server):
    server = start_server(long_model_dir, "--no-stop-loops", "--draft-tokens", "0", "--max-batch", "2")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        cached = await client.post("/v1/completions", json=completion("def f", "doc-9"))  # now in the cache
        async with client.stream("POST", "/v1/completions",
                                 json=completion("def ", "doc-1", stream=True, max_tokens=1500)) as response:
            lines = response.aiter_lines()
            await anext(line async for line in lines if line.startswith("data: "))
            newer = await client.post("/v1/completions", json=completion("def f", "doc-1"))
            rest = [line async for line in lines if line.startswith("data: ")]
    assert cached.status_code == newer.status_code == 200 and newer.json()["choices"] == cached.json()["choices"]
    assert json.loads(rest[-1][6:])["error"]["code"] == "superseded"
    assert server.metric("engine_requests_superseded_total") == 1


async def test_a_request_the_queue_would_keep_too_long_is_answered_429_at_once(long_model_dir, start_server):
    server = start_server(long_model_dir, *ONE_SLOT, "--max-queue-wait-ms", "200")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        hold = asyncio.create_task(client.post("/complete", json=HOLD))
        await wait_for(lambda: server.metric("engine_running_batch_size") == 1)
        started = time.monotonic()
        answers = await asyncio.gather(post(client, completion("a = ")), post(client, completion("b = ", stream=True)),
                                       client.post("/complete", json={"code": "c = ", "max_tokens": 4}))
        waited = time.monotonic() - started
        assert not hold.done(), "the 429s came only once the slot was free"
        assert (await hold).status_code == 200
    statuses = [a[0] for a in answers[:2]] + [answers[2].status_code]
    assert statuses == [429, 429, 429], answers
    for headers in [a[1] for a in answers[:2]] + [answers[2].headers]:
        assert int(headers["retry-after"]) >= 1
    assert json.loads(answers[1][2][0])["error"]["code"] == "engine_busy"  # streamed: a JSON error, no events
    assert waited < 1.0
    assert server.metric("engine_requests_shed_total") == 3
    assert server.metric("code_completion_requests_total", status="429") == 3


async def test_the_openai_client_raises_conflict_for_a_superseded_request_and_does_not_retry_it(long_model_dir,
                                                                                             start_server):
    import openai

    server = start_server(long_model_dir, *ONE_SLOT, "--max-queue-wait-ms", "0")
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=60)  # default retries
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        hold = asyncio.create_task(http.post("/complete", json=HOLD))
        await wait_for(lambda: server.metric("engine_running_batch_size") == 1)
        older = asyncio.create_task(client.completions.create(model="code-assistant", prompt="a = ", max_tokens=4,
                                                              temperature=0, user="doc-1"))
        await wait_for(lambda: server.metric("engine_queue_depth") == 1)
        newer = asyncio.create_task(client.completions.create(model="code-assistant", prompt="a = 1", max_tokens=4,
                                                              temperature=0, user="doc-1"))
        with pytest.raises(openai.ConflictError) as superseded:
            await older
        assert superseded.value.code == "superseded"
        assert (await newer).choices[0].finish_reason in ("stop", "length")
        await hold
    assert server.metric("code_completion_requests_total", status="409") == 1  # no retry came
