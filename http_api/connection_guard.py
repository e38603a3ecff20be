"""What uvicorn's h11 protocol lacks against slow or too many clients.

- A header timeout: a request's line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the previous response ending, on a kept-alive connection). Without
  it a client that sends a byte a second holds its connection forever; uvicorn's keep-alive
  timeout only runs while nothing at all arrives. Such a client gets a 408 and the connection closes.
- A connection cap per client address: beyond `max_per_client` open connections from one address
  a new one from it gets a 503 with Retry-After and is closed at once. One client cannot take the
  connections others (a load balancer's health checks, the kubelet's probes) need.
- A connection cap per server: at `max_connections` open connections, a new one from another
  address still gets in when some connection is idle (no request in progress): the idle one of
  the address holding the most connections is closed to make room. Only when every connection is
  busy with a request does a newcomer get the 503. So many addresses together cannot starve a
  probe either, while a request in progress is never cut off.
(uvicorn's limit_concurrency only answers requests, so connections that never finish one would
still pile up.)

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
CLIENT_BUSY_503 = _raw_response(503, "Service Unavailable", "too_many_connections",
                                "this address has too many open connections; retry shortly", "retry-after: 1\r\n")


def guarded_protocol(header_timeout_s: float, max_connections: int, max_per_client: int) -> type[H11Protocol]:
    by_client: dict[str, set[H11Protocol]] = {}  # one server's admitted connections per client address

    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        address: str | None = None  # set once admitted

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "unknown"
            mine = by_client.get(address, set())
            if len(mine) >= max_per_client:
                return self._refuse(CLIENT_BUSY_503)
            admitted = sum(len(c) for c in by_client.values())
            if admitted >= max_connections and not self._evict_an_idle_connection(len(mine)):
                return self._refuse(BUSY_503)
            self.address = address
            by_client.setdefault(address, set()).add(self)
            self._arm_header_timer()

        def _refuse(self, reply: bytes) -> None:
            self.transport.write(reply)
            self.transport.close()

        def _evict_an_idle_connection(self, newcomer_holds: int) -> bool:
            """Close an idle connection of the address holding the most, if it holds more than the
            newcomer's address does (so a client never takes another's place to add to its own)."""
            for address in sorted(by_client, key=lambda a: len(by_client[a]), reverse=True):
                if len(by_client[address]) <= newcomer_holds + 1:
                    return False
                for other in list(by_client[address]):
                    if other.is_idle() and not other.transport.is_closing():
                        other.transport.close()  # closing an idle kept-alive connection is plain HTTP
                        other.forget()
                        return True
            return False

        def is_idle(self) -> bool:
            # h11 leaves IDLE only once a whole request line and headers have been parsed.
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def forget(self) -> None:
            if self.address is not None:
                mine = by_client.get(self.address)
                if mine is not None:
                    mine.discard(self)
                    if not mine:
                        del by_client[self.address]
                self.address = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.forget()
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
            if self.is_idle() and not self.transport.is_closing():
                self.transport.write(TIMEOUT_408)
                self.transport.close()

    return GuardedH11Protocol
