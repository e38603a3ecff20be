"""JSON-RPC at the edge of the language server: pygls 2.1's protocol, with every request answered.

pygls leaves three kinds of request unanswered, and an editor waits on each forever:
- a request whose params do not fit the LSP types (`character: -1`, `line: 2**31`, `params: null`,
  no `textDocument`): its structuring fails inside `json.loads`, before any handler;
- a frame that is not a JSON-RPC request (not JSON, an array, no `method`, `jsonrpc` other than
  "2.0"): pygls logs it and shows the editor a popup (window/showMessage) for each one;
- any request after `shutdown`: dropped.
Here the first get InvalidParams, the second -32700 (Parse error) or -32600 (Invalid Request)
with the id when there is one (null when not), the third InvalidRequest; none gives a popup.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lsprotocol.types import EXIT
from pygls.exceptions import (JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcParseError)
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger("lsp_server")

JSONRPC = "2.0"


@dataclass
class Unusable:
    """A frame that parsed as JSON but is no message pygls can handle: what to answer, if anything."""
    id: int | str | None
    error: type[JsonRpcException]
    reason: str
    answer: bool = True        # False for a notification: nobody waits for an answer


def request_id(data: Any) -> int | str | None:
    """The id of a would-be request, when it has one JSON-RPC allows (a number or a string)."""
    if isinstance(data, dict) and isinstance(data.get("id"), (int, str)) and not isinstance(data.get("id"), bool):
        return data["id"]
    return None


class CodeAssistantProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]):
        # Called by json.loads for every object, innermost first; only messages carry "jsonrpc".
        if "jsonrpc" not in data:
            return data
        if not isinstance(data.get("method", ""), str) or data["jsonrpc"] != JSONRPC:
            return Unusable(request_id(data), JsonRpcInvalidRequest, "not a JSON-RPC 2.0 message")
        if "id" in data and request_id(data) is None and data["id"] is not None:
            return Unusable(None, JsonRpcInvalidRequest, "the id must be a number or a string")
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            is_request = "method" in data and "id" in data
            reason = f"params do not fit {data.get('method')!r}" if "method" in data else "unreadable message"
            return Unusable(request_id(data), JsonRpcInvalidParams if isinstance(error, JsonRpcInvalidParams)
                            else JsonRpcInternalError, reason, answer=is_request)

    def handle_message(self, message) -> None:
        if isinstance(message, Unusable):
            log.warning("bad JSON-RPC message: %s", message.reason)
            if message.answer:
                self.send_error(message.id, message.error, message.reason)
            return
        if not hasattr(message, "jsonrpc"):  # valid JSON, but an array, a number, an object without jsonrpc
            self.send_error(request_id(message), JsonRpcInvalidRequest, "not a JSON-RPC 2.0 message")
            return
        if self._shutdown and getattr(message, "method", EXIT) != EXIT and hasattr(message, "id"):
            self.send_error(message.id, JsonRpcInvalidRequest, "the server is shutting down (shutdown was requested)")
            return
        super().handle_message(message)

    def answer_unreadable(self, error: Exception) -> None:
        """A frame whose body json.loads refused (or that broke the reader otherwise): a -32700
        with a null id (its id cannot be known), never a popup."""
        log.warning("unreadable JSON-RPC frame: %s", error)
        if isinstance(error, ValueError):  # JSONDecodeError, UnicodeDecodeError
            self.send_error(None, JsonRpcParseError, "the message is not valid UTF-8 JSON")
        else:
            self.send_error(None, JsonRpcInternalError, "the message could not be handled")

    def send_error(self, id: int | str | None, error: type[JsonRpcException], message: str) -> None:
        # A plain dict: pygls' own response type would drop a null id, which JSON-RPC requires here.
        self._send_data({"jsonrpc": JSONRPC, "id": id, "error": {"code": error.CODE, "message": message}})
