"""What uvicorn's h11 protocol lacks against slow or too many clients.

- A header timeout: a request's line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the previous response ending, on a kept-alive connection). Without
  it a client that sends a byte a second holds its connection forever; uvicorn's keep-alive
  timeout only runs while nothing at all arrives. Such a client gets a 408 and the connection closes.
- A connection cap: beyond `max_connections` open connections a new one gets a 503 with
  Retry-After and is closed at once (uvicorn's limit_concurrency only answers requests, so
  connections that never finish one would still pile up).

The body timeout is the ASGI layer's (middleware.py), where it can answer in the API's error shape.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = ('{"error": {"message": "%s", "type": "invalid_request_error", "param": null, "code": "%s"}}'
            % (message, code)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n")
    return head.encode() + body


TIMEOUT_408 = _raw_response(408, "Request Timeout", "request_timeout", "the request headers did not arrive in time")
BUSY_503 = _raw_response(503, "Service Unavailable", "too_many_connections",
                         "the server has too many open connections; retry shortly", "retry-after: 1\r\n")


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(BUSY_503)
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()  # the next request on this connection gets its own allowance

        def _arm_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            # h11 leaves IDLE only once a whole request line and headers have been parsed.
            waiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
            if waiting and not self.transport.is_closing():
                self.transport.write(TIMEOUT_408)
                self.transport.close()

    return GuardedH11Protocol
