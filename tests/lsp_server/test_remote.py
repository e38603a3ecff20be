"""--remote: the language server asks a real `code-assistant serve`; a down or slow one gives nothing fast."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from lsprotocol import types

from .test_server import CLI, SOURCE, URI, finish, initialize, inline_params, open_document, start

pytestmark = pytest.mark.timeout(120)
KEY = "lsp-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server_log(tmp_path_factory) -> Path:
    """The serve process's log: one JSON line per request, with the prompt tokens it ran."""
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def http_server(tiny_model_dir, tmp_path_factory, http_server_log):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    port = free_port()
    log = open(http_server_log, "wb")
    process = subprocess.Popen([CLI, "serve", "--model", str(tiny_model_dir), "--port", str(port),
                                "--api-keys-file", str(keys), "--no-response-cache"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "serve exited"
            time.sleep(0.3)
        else:
            pytest.fail("serve did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def prompt_tokens_served(log: Path) -> list[int]:
    """The prompt tokens of each completion the server ran, in order."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["prompt_tokens"] for line in lines
            if line.get("path") == "/v1/completions" and line.get("prompt_tokens") is not None]


def event_count(url: str, event: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("completion_events_total{") and f'event="{event}"' in line
               and 'language="python"' in line)


async def test_remote_mode_completes_through_the_http_server_and_reports_events(http_server, tiny_model_dir):
    client = await start(tiny_model_dir, "--remote", http_server, "--api-key", KEY)
    await initialize(client)
    open_document(client, SOURCE)
    shown_before = event_count(http_server, "shown")
    partly_before = event_count(http_server, "partially_accepted")
    item = None
    for number, line in enumerate(SOURCE.split("\n")[:60]):  # the random model is often silent
        if line.strip():
            result = await client.text_document_inline_completion_async(inline_params(number, len(line)))
            if result.items:
                item = result.items[0]
                break
    assert item is not None and item.insert_text.strip()
    # Ctrl+Right first (the next word), then Tab (the rest): both reach the team server.
    partly = await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="codeAssistant.partialAccept", arguments=[{**item.command.arguments[0], "kind": "word",
                                                           "acceptedLength": 3}]))
    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="codeAssistant.accept", arguments=item.command.arguments))
    await asyncio.sleep(0.3)  # events are reported in the background
    assert event_count(http_server, "shown") >= shown_before + 1
    assert event_count(http_server, "accepted") >= 1
    assert event_count(http_server, "partially_accepted") == partly_before + 1
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codeAssistant.stats"))
    assert partly == {"partlyAccepted": 1} and stats["partlyAccepted"] == {"python": 1}, (partly, stats)
    assert await finish(client) == 0


async def test_a_wrong_key_gives_an_empty_result_and_a_working_server(http_server, tiny_model_dir):
    client = await start(tiny_model_dir, "--remote", http_server, "--api-key", "wrong")
    await initialize(client)
    open_document(client, SOURCE)
    assert (await client.text_document_inline_completion_async(inline_params(0, 10))).items == ()
    assert await finish(client) == 0


async def test_a_down_remote_gives_an_empty_result_quickly(tiny_model_dir):
    client = await start(tiny_model_dir, "--remote", f"http://127.0.0.1:{free_port()}")
    await initialize(client)
    open_document(client, SOURCE)
    started = time.perf_counter()
    assert (await client.text_document_inline_completion_async(inline_params(5, 10))).items == ()
    assert time.perf_counter() - started < 2
    assert await finish(client) == 0


async def test_a_slow_remote_gives_an_empty_result_within_the_timeout(tiny_model_dir):
    async def never_answer(reader, writer):
        await asyncio.sleep(30)
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    client = await start(tiny_model_dir, "--remote", f"http://127.0.0.1:{port}")
    await initialize(client, {"debounceMs": 0, "timeoutMs": 500})
    open_document(client, SOURCE)
    started = time.perf_counter()
    assert (await client.text_document_inline_completion_async(inline_params(5, 10))).items == ()
    assert time.perf_counter() - started < 2
    assert await finish(client) == 0
    silent.close()


async def test_context_tokens_limits_the_prompt_the_remote_server_runs(http_server, http_server_log, tiny_model_dir):
    # The tiny model's context is 128 tokens: by default a long prefix fills its budget (128 less
    # the 48 tokens to generate); with contextTokens 24 the server runs at most 24, as the engine
    # in the editor's own process would.
    served = []
    for options in ({"debounceMs": 0}, {"debounceMs": 0, "contextTokens": 24}):
        client = await start(tiny_model_dir, "--remote", http_server, "--api-key", KEY)
        await initialize(client, options)
        open_document(client, SOURCE)
        before = len(prompt_tokens_served(http_server_log))
        await client.text_document_inline_completion_async(inline_params(200, 0))
        assert await finish(client) == 0
        for _ in range(50):  # the request's log line is written as its response ends
            if len(prompt_tokens_served(http_server_log)) > before:
                break
            await asyncio.sleep(0.1)
        served.append(prompt_tokens_served(http_server_log)[before])
    default, limited = served
    assert default > 24 and 16 <= limited <= 24, served
