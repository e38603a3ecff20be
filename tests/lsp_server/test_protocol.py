"""JSON-RPC at the edge of the real `code-assistant lsp` over stdio: every request gets an answer
(a result or an error), requests that break the protocol's types get InvalidParams, frames that
are not JSON-RPC get -32700 / -32600 without a popup in the editor, and requests after `shutdown`
get InvalidRequest. Frames are written by hand here: a well-behaved client cannot send them."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import pytest_asyncio

CLI = str(Path(sys.executable).parent / "code-assistant")
URI = "file:///work/project/a.py"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
# One server for the module: each test also checks that it still serves after its bad input.
pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]


class RawClient:
    """Frames in, every message out (notifications kept, so the tests can see what the editor would show)."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process, self.notifications, self._next_id = process, [], 100

    @classmethod
    async def start(cls, model_dir: Path) -> "RawClient":
        process = await asyncio.create_subprocess_exec(CLI, "lsp", "--model", str(model_dir),
                                                       stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        return cls(process)

    async def send_raw(self, body: bytes) -> None:
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await self.process.stdin.drain()

    async def send(self, message: dict) -> None:
        await self.send_raw(json.dumps({"jsonrpc": "2.0", **message}).encode())

    async def read(self, timeout: float = 20) -> dict:
        header = await asyncio.wait_for(self.process.stdout.readuntil(b"\r\n\r\n"), timeout)
        length = int(header.split(b"Content-Length:")[1].split(b"\r\n")[0])
        return json.loads(await self.process.stdout.readexactly(length))

    async def response(self, id, timeout: float = 20) -> dict:
        """The response with this id; notifications meanwhile are kept, requests from the server answered."""
        while True:
            message = await self.read(timeout)
            if "method" in message and "id" in message:  # a request from the server (e.g. registerCapability)
                await self.send({"id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)
            elif message.get("id") == id:
                return message

    async def request(self, method: str, params) -> dict:
        self._next_id += 1
        await self.send({"id": self._next_id, "method": method, "params": params})
        return await self.response(self._next_id)

    async def initialize(self) -> None:
        await self.request("initialize", {"processId": None, "rootUri": "file:///work/project", "capabilities": {},
                                          "initializationOptions": {"debounceMs": 0}})
        await self.send({"method": "initialized", "params": {}})
        await self.send({"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": URI, "languageId": "python", "version": 1, "text": "import os\n\ndef main():\n    return "}}})

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.kill()
        return await self.process.wait()

    def popups(self) -> list[dict]:
        return [n for n in self.notifications if n["method"] == "window/showMessage"]


def inline(line, character, uri=URI) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tiny_model_dir):
    client = await RawClient.start(tiny_model_dir)
    await client.initialize()
    yield client
    await client.stop()


@pytest.fixture
def client(shared):
    shared.notifications.clear()
    return shared


@pytest_asyncio.fixture(loop_scope="module")
async def own_client(tiny_model_dir):
    client = await RawClient.start(tiny_model_dir)
    await client.initialize()
    yield client
    await client.stop()


BAD_PARAMS = [
    ("negative-character", "textDocument/inlineCompletion", inline(3, -1)),
    ("line-2**31", "textDocument/inlineCompletion", inline(2**31, 0)),
    ("params-null", "textDocument/inlineCompletion", None),
    ("no-text-document", "textDocument/completion", {"position": {"line": 0, "character": 0}}),
    ("character-string", "textDocument/completion", {"textDocument": {"uri": URI},
                                                     "position": {"line": 0, "character": "x"}}),
    ("context-missing", "textDocument/inlineCompletion", {"textDocument": {"uri": URI},
                                                         "position": {"line": 0, "character": 0}}),
]


@pytest.mark.parametrize("method, params", [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
async def test_a_request_that_breaks_the_protocol_types_gets_invalid_params(client, method, params):
    answer = await client.request(method, params)
    assert answer["error"]["code"] == INVALID_PARAMS, answer
    assert client.popups() == []
    ok = await client.request("textDocument/inlineCompletion", inline(3, 11))  # still serving
    assert "result" in ok and "items" in ok["result"], ok


MALFORMED = [
    ("not-json", b"{not json", None, PARSE_ERROR),
    ("truncated-json", b'{"jsonrpc": "2.0", "id": 5, "method": "shutdown"', None, PARSE_ERROR),
    ("not-utf8", b'{"jsonrpc": "2.0", "id": 6, "method": "\xff"}', None, PARSE_ERROR),
    ("array", b"[1, 2]", None, INVALID_REQUEST),
    ("number", b"42", None, INVALID_REQUEST),
    ("no-jsonrpc-no-method", b'{"id": 7}', 7, INVALID_REQUEST),
    ("method-not-a-string", b'{"jsonrpc": "2.0", "id": 8, "method": 5}', 8, INVALID_REQUEST),
    ("jsonrpc-1.0", b'{"jsonrpc": "1.0", "id": 9, "method": "textDocument/hover", "params": {}}', 9,
     INVALID_REQUEST),
    ("id-an-object", b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}', None, INVALID_REQUEST),
]


@pytest.mark.parametrize("body, id, code", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
async def test_a_malformed_frame_gets_a_json_rpc_error_and_no_popup(client, body, id, code):
    await client.send_raw(body)
    answer = await client.response(id)
    assert answer["error"]["code"] == code and answer["id"] == id, answer
    ok = await client.request("textDocument/inlineCompletion", inline(3, 11))
    assert "result" in ok, ok
    assert client.popups() == [], client.popups()


async def test_an_unknown_method_gets_method_not_found(client):
    assert (await client.request("textDocument/nothing", {}))["error"]["code"] == METHOD_NOT_FOUND


async def test_requests_after_shutdown_get_invalid_request_and_exit_still_exits(own_client):
    client = own_client
    assert (await client.request("shutdown", None))["result"] is None
    for method, params in (("textDocument/inlineCompletion", inline(3, 11)), ("shutdown", None),
                           ("textDocument/completion", {"textDocument": {"uri": URI},
                                                        "position": {"line": 3, "character": 11}})):
        answer = await client.request(method, params)
        assert answer["error"]["code"] == INVALID_REQUEST, answer
    await client.send({"method": "exit"})
    assert await asyncio.wait_for(client.process.wait(), 15) == 0
