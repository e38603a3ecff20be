"""End to end: the real `code-assistant lsp` over stdio, driven by pytest-lsp's client.

The model is random, so what it writes is noise; each test compares the server's answer with the
completion pipeline run in this process on the same model (an oracle), at a position where that
pipeline gives a non-empty completion.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from engine import Engine
from lsp_server.completer import LocalBackend, complete
from lsp_server.documents import split_at, utf16_length
from lsp_server.settings import Settings

CLI = str(Path(sys.executable).parent / "code-assistant")
SOURCE = Path(json.__file__).with_name("encoder.py").read_text()
URI = "file:///work/project/encoder.py"
NO_DEBOUNCE = {"debounceMs": 0}
pytestmark = pytest.mark.timeout(90)


def capabilities(name: str = "visual-studio-code") -> types.ClientCapabilities:
    caps = client_capabilities(name)
    caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    return caps


async def start(model_dir: Path, *extra: str) -> LanguageClient:
    return await ClientServerConfig(server_command=[CLI, "lsp", "--model", str(model_dir), *extra]).start()


async def initialize(client: LanguageClient, options: dict | None = None, caps: str = "visual-studio-code"):
    return await client.initialize_session(types.InitializeParams(
        capabilities=capabilities(caps), initialization_options=options or NO_DEBOUNCE,
        root_uri="file:///work/project"))


def open_document(client: LanguageClient, text: str, uri: str = URI, version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)))


def inline_params(line: int, character: int, invoked: bool = True, uri: str = URI):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind),
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character))


async def finish(client: LanguageClient) -> int:
    """shutdown + exit, as an editor does; the server must exit cleanly (code 0)."""
    try:
        await asyncio.wait_for(client.shutdown_session(), 15)
    except Exception:
        client._server.terminate()  # leave no server behind, then report the failure
        raise
    finally:
        await client.stop()
    return client._server.returncode


@pytest.fixture(scope="module")
def oracle_engine(tiny_model_dir):
    engine = Engine.load(tiny_model_dir)
    yield engine
    engine.close()


async def expected(engine, text: str, line: int, character: int, invoked: bool = True, **settings):
    cursor = split_at(text, line, character)
    suggestion = await complete(cursor, Settings(debounce_ms=0, **settings), LocalBackend(engine), invoked)
    return cursor, suggestion


async def first_completing_line(engine, text: str, invoked: bool = True, **settings) -> tuple[int, int, object]:
    """The first line end where the pipeline completes something (the random model is often silent)."""
    lines = text.split("\n")
    for number, line in enumerate(lines[:200]):
        if line.strip():
            _, suggestion = await expected(engine, text, number, utf16_length(line), invoked, **settings)
            if suggestion is not None:
                return number, utf16_length(line), suggestion
    raise AssertionError("the model completes nothing on this text")


@pytest_asyncio.fixture
async def client(tiny_model_dir):
    client = await start(tiny_model_dir)
    await initialize(client)
    yield client
    assert await finish(client) == 0


async def test_initialize_advertises_inline_completion_completion_and_commands(tiny_model_dir):
    client = await start(tiny_model_dir)
    result = await initialize(client)
    caps = result.capabilities
    assert caps.inline_completion_provider
    assert caps.completion_provider is not None
    assert {"codeAssistant.accept", "codeAssistant.stats"} <= set(caps.execute_command_provider.commands)
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert await finish(client) == 0


async def test_inline_completion_matches_the_pipeline_and_carries_the_accept_command(client, oracle_engine):
    line, character, suggestion = await first_completing_line(oracle_engine, SOURCE)
    open_document(client, SOURCE)
    result = await client.text_document_inline_completion_async(inline_params(line, character))
    assert len(result.items) == 1
    item = result.items[0]
    assert item.insert_text == suggestion.edit.text
    assert item.range.start == types.Position(line, character)
    assert item.command.command == "codeAssistant.accept"
    assert item.command.arguments[0]["language"] == "python"

    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="codeAssistant.accept", arguments=item.command.arguments))
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codeAssistant.stats"))
    assert stats["shown"] == {"python": 1} and stats["accepted"] == {"python": 1}


async def test_completion_list_is_incomplete_and_starts_at_the_word_before_the_cursor(tiny_model_dir, oracle_engine):
    client = await start(tiny_model_dir)
    await initialize(client, caps="neovim@v0.7.0")  # a popup-only client
    line, character, suggestion = await first_completing_line(oracle_engine, SOURCE)
    open_document(client, SOURCE)
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line, character),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)))
    assert result.is_incomplete is True
    [item] = result.items
    text_line = SOURCE.split("\n")[line]
    word = text_line[len(text_line.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")):]
    assert item.text_edit.new_text == word + suggestion.edit.text
    assert item.text_edit.range.start == types.Position(line, character - len(word))
    assert item.label.startswith(word) and item.command.command == "codeAssistant.accept"
    assert await finish(client) == 0


async def test_incremental_changes_with_non_ascii_lines_use_utf16_positions(client, oracle_engine):
    """Emoji are two UTF-16 units: a server counting code points would see another prefix."""
    base = "\n".join(SOURCE.split("\n")[:40]) + "\n"
    open_document(client, base)
    for k in range(40):
        inserted = f"label_{k} = '😀 naïve ✓ 😀' + "
        text = inserted + "\n" + base
        _, suggestion = await expected(oracle_engine, text, 0, utf16_length(inserted))
        if suggestion is not None:
            break
    else:
        pytest.fail("no completing variant")
    # Type the line in two incremental edits: the second lands after the emoji, at a UTF-16 column.
    head, tail = inserted[:12], inserted[12:]
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(0, 0), types.Position(0, 0)), text=head + "\n")]))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=3),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(0, utf16_length(head)), types.Position(0, utf16_length(head))),
            text=tail)]))
    result = await client.text_document_inline_completion_async(inline_params(0, utf16_length(inserted)))
    assert [i.insert_text for i in result.items] == [suggestion.edit.text]
    assert result.items[0].range.start.character == utf16_length(inserted) == len(inserted) + 2


async def test_configuration_change_disables_and_switches_to_multiline(client, oracle_engine):
    line, character, suggestion = await first_completing_line(oracle_engine, SOURCE, invoked=False)
    open_document(client, SOURCE)
    automatic = inline_params(line, character, invoked=False)
    assert [i.insert_text for i in (await client.text_document_inline_completion_async(automatic)).items] == [
        suggestion.edit.text]
    assert "\n" not in suggestion.edit.text  # automatic triggers stop at the end of the line

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"codeAssistant": {"enable": False}}))
    assert (await client.text_document_inline_completion_async(automatic)).items == ()

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"codeAssistant": {"enable": True, "multiline": True, "maxTokens": 64}}))
    _, multiline = await expected(oracle_engine, SOURCE, line, character, invoked=False, multiline=True,
                                  max_tokens=64)
    result = await client.text_document_inline_completion_async(automatic)
    assert [i.insert_text for i in result.items] == ([multiline.edit.text] if multiline else [])


async def test_cancel_request_and_newer_request_cancel_the_older_one(client, oracle_engine):
    open_document(client, SOURCE)
    line, character, _ = await first_completing_line(oracle_engine, SOURCE, invoked=False)
    # No prefetch: its background generation is engine work by design (tested on its own).
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"debounceMs": 3000, "prefetch": False}))

    # $/cancelRequest while the request waits (debounce): the client gets RequestCancelled, at once.
    started = time.perf_counter()
    pending = asyncio.ensure_future(client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(line, character, invoked=False), msg_id="slow-1"))
    await asyncio.sleep(0.2)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(Exception, match="cancel"):
        await pending
    assert time.perf_counter() - started < 2.5

    # A newer request for the same document supersedes the older: the older answers empty at once.
    older = asyncio.ensure_future(client.text_document_inline_completion_async(
        inline_params(line, character, invoked=False)))
    await asyncio.sleep(0.2)
    newer = asyncio.ensure_future(client.text_document_inline_completion_async(
        inline_params(line, character, invoked=True)))
    assert (await older).items == ()
    assert len((await newer).items) == 1
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codeAssistant.stats"))
    assert stats["pending"] == 0 and stats["engine"]["running"] == 0


async def test_bad_input_gives_errors_or_nothing_and_the_server_keeps_running(tiny_model_dir, oracle_engine):
    client = await start(tiny_model_dir)
    with pytest.raises(Exception, match="initialized"):
        await client.text_document_inline_completion_async(inline_params(0, 0))
    await initialize(client)
    # Unknown document.
    assert (await client.text_document_inline_completion_async(inline_params(0, 0, uri="file:///nope.py"))).items == ()
    open_document(client, SOURCE)
    # Line past the end: an error; column past the end of a line: clamped to its end.
    with pytest.raises(Exception, match="past the end"):
        await client.text_document_inline_completion_async(inline_params(10_000, 0))
    line, character, suggestion = await first_completing_line(oracle_engine, SOURCE)
    result = await client.text_document_inline_completion_async(inline_params(line, character + 500))
    assert [i.insert_text for i in result.items] == [suggestion.edit.text]
    assert result.items[0].range.start == types.Position(line, character)
    # Binary, huge and lone-surrogate documents.
    open_document(client, "abc\x00\x01\x02 def", uri="file:///work/project/blob.bin")
    assert (await client.text_document_inline_completion_async(
        inline_params(0, 4, uri="file:///work/project/blob.bin"))).items == ()
    open_document(client, "x = 1\n" * 400_000, uri="file:///work/project/huge.py")
    assert (await client.text_document_inline_completion_async(
        inline_params(5, 5, uri="file:///work/project/huge.py"))).items == ()
    open_document(client, "s = '\ud800'\nname = ", uri="file:///work/project/surrogate.py")
    await client.text_document_inline_completion_async(inline_params(1, 7, uri="file:///work/project/surrogate.py"))
    # Still alive and still right.
    result = await client.text_document_inline_completion_async(inline_params(line, character))
    assert [i.insert_text for i in result.items] == [suggestion.edit.text]
    assert await finish(client) == 0


async def test_a_name_defined_only_in_another_open_document_gets_completed(client):
    """Neighbour snippets reach the prompt and the engine's cache model (issue 11)."""
    helpers = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n"
    main = "import helpers\n\nvalue = helpers.very_specific"
    open_document(client, helpers, uri="file:///work/project/helpers.py")
    open_document(client, main, uri="file:///work/project/main.py")
    request = inline_params(2, len("value = helpers.very_specific"), uri="file:///work/project/main.py")
    [item] = (await client.text_document_inline_completion_async(request)).items
    assert item.insert_text.startswith("_name_42(")

    # Closed, it is still a recently edited file.
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        types.TextDocumentIdentifier(uri="file:///work/project/helpers.py")))
    [item] = (await client.text_document_inline_completion_async(request)).items
    assert item.insert_text.startswith("_name_42(")

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"neighbours": False}))
    result = await client.text_document_inline_completion_async(request)
    assert not any(i.insert_text.startswith("_name_42(") for i in result.items)


async def test_a_name_defined_beyond_the_prompt_budget_gets_completed(client):
    """The rest of the file reaches the engine's cache model: a definition 120 lines up, far outside
    the tiny model's 128-token window, is still completed."""
    filler = "".join(f"def helper_{i}(a, b):\n    return a + b * {i}\n\n" for i in range(40))
    text = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n\n" + filler
    text += "value = very_specific"
    open_document(client, text)
    request = inline_params(text.count("\n"), len("value = very_specific"))
    [item] = (await client.text_document_inline_completion_async(request)).items
    assert item.insert_text.startswith("_name_42(")


async def test_tcp_mode_serves_the_same_protocol(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = await asyncio.create_subprocess_exec(CLI, "lsp", "--model", str(tiny_model_dir), "--tcp", str(port),
                                                   stderr=asyncio.subprocess.DEVNULL)
    client = LanguageClient()
    try:
        for _ in range(100):
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        result = await asyncio.wait_for(client.initialize_session(types.InitializeParams(
            capabilities=capabilities())), 30)
        assert result.capabilities.inline_completion_provider
    finally:
        process.kill()
        await process.wait()


async def test_malformed_json_rpc_is_skipped_and_the_server_keeps_running(tiny_model_dir):
    process = await asyncio.create_subprocess_exec(CLI, "lsp", "--model", str(tiny_model_dir),
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.DEVNULL)

    def frame(body: bytes) -> bytes:
        return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    initialize_request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                     "params": {"capabilities": {}, "processId": None}}).encode()
    process.stdin.write(frame(b"{not json") + frame(b'{"id": 7}') + frame(b"[1, 2]") + frame(initialize_request))
    await process.stdin.drain()
    try:
        while True:  # skip notifications (window/showMessage about the bad frames) up to the response
            header = await asyncio.wait_for(process.stdout.readuntil(b"\r\n\r\n"), 30)
            length = int(header.split(b"Content-Length:")[1].split(b"\r\n")[0])
            message = json.loads(await process.stdout.readexactly(length))
            if message.get("id") == 1:
                break
        assert "inlineCompletionProvider" in message["result"]["capabilities"]
    finally:
        process.kill()
        await process.wait()
