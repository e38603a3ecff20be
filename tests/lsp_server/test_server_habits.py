"""The real server over stdio: exclusions, typed-ahead reuse, prefetch and partial accepts."""
from __future__ import annotations

import asyncio
import subprocess

import pytest
from lsprotocol import types

from .test_server import SOURCE, finish, first_completing_line, inline_params, open_document, start, initialize
from .test_server import oracle_engine  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def change(client, uri: str, version: int, line: int, character: int, text: str) -> None:
    position = types.Position(line, character)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(position, position), text=text)]))


async def stats(client) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codeAssistant.stats"))


async def test_secrets_ignored_files_and_user_globs_get_nothing(tiny_model_dir, tmp_path, oracle_engine):  # noqa: F811
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("build/\n")
    line, character, _ = await first_completing_line(oracle_engine, SOURCE)
    client = await start(tiny_model_dir)
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=tmp_path.as_uri(),
        initialization_options={"debounceMs": 0, "exclude": ["vendor/**"]}))
    allowed = (tmp_path / "app.py").as_uri()
    open_document(client, SOURCE, uri=allowed)
    assert (await client.text_document_inline_completion_async(inline_params(line, character, uri=allowed))).items
    for name in ("build/app.py", ".env", "vendor/lib/app.py", "deploy/server.pem"):
        uri = (tmp_path / name).as_uri()
        open_document(client, SOURCE, uri=uri)
        result = await client.text_document_inline_completion_async(inline_params(line, character, uri=uri))
        assert result.items == (), name
    assert await finish(client) == 0


async def test_typing_ahead_is_answered_from_the_cache_and_partial_accepts_are_counted(tiny_model_dir, oracle_engine):  # noqa: F811
    line, character, suggestion = await first_completing_line(oracle_engine, SOURCE, invoked=False)
    text = suggestion.edit.text
    if len(text.strip()) < 2 or suggestion.edit.replaces_line_suffix:
        pytest.skip("the random model's first suggestion is too short to type into")
    client = await start(tiny_model_dir)
    await initialize(client, {"debounceMs": 0})
    open_document(client, SOURCE)
    [item] = (await client.text_document_inline_completion_async(inline_params(line, character, invoked=False))).items
    assert item.insert_text == text
    change(client, "file:///work/project/encoder.py", 2, line, character, text[0])
    [rest] = (await client.text_document_inline_completion_async(
        inline_params(line, character + 1, invoked=False))).items
    assert rest.insert_text == text[1:]
    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="codeAssistant.partialAccept", arguments=[{**item.command.arguments[0], "kind": "word",
                                                            "acceptedLength": 1}]))
    counts = await stats(client)
    assert counts["cacheHits"] >= 1 and counts["partlyAccepted"] == {"python": 1}
    await asyncio.sleep(0.5)  # the prefetch of what follows, in the background
    assert await finish(client) == 0
