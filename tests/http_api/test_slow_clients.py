"""Slow or too many clients cannot hold the server: a request's headers and body must arrive within
timeouts an operator sets, and connections beyond a cap are turned away at once with a 503."""
from __future__ import annotations

import socket
import time

import httpx
import pytest

from .conftest import ServerProcess


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir, tmp_path_factory):
    proc = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("strict") / "server.log",
                         "--header-timeout", "2", "--body-timeout", "3", "--max-connections", "40")
    yield proc
    proc.stop()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_server(s: socket.socket) -> tuple[bool, bytes]:
    """(whether the server closed the connection, what it sent before closing)."""
    s.settimeout(0.05)
    received = b""
    try:
        while chunk := s.recv(4096):
            received += chunk
        return True, received
    except (socket.timeout, BlockingIOError):
        return False, received
    except (ConnectionResetError, BrokenPipeError):
        return True, received


def drip(sockets: list[socket.socket], seconds: float) -> None:
    """Send one byte of a never-ending header every 0.25 s on each socket (slowloris)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in sockets:
            try:
                s.send(b"a")
            except OSError:
                pass
        time.sleep(0.25)


def test_headers_dripped_a_byte_at_a_time_are_cut_off_by_the_header_timeout(strict_server):
    sockets = [connect(strict_server.port) for _ in range(30)]
    for s in sockets:
        s.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    drip(sockets, 1.0)
    assert httpx.get(strict_server.url + "/health", timeout=5).status_code == 200  # others are served meanwhile
    drip(sockets, 2.5)  # past the 2 s header timeout
    results = [closed_by_server(s) for s in sockets]
    assert all(closed for closed, _ in results), sum(closed for closed, _ in results)
    assert all(body.startswith(b"HTTP/1.1 408") for _, body in results), results[0]
    for s in sockets:
        s.close()


def test_a_body_that_stalls_is_a_408_after_the_body_timeout(strict_server):
    s = connect(strict_server.port)
    s.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 200\r\n\r\n{\"prompt\": \"")
    started = time.monotonic()
    s.settimeout(10)
    response = b""
    while chunk := s.recv(65536):  # the server closes the connection after its answer
        response += chunk
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"request_timeout" in response
    assert 2.5 < time.monotonic() - started < 8
    s.close()


def test_connections_beyond_the_cap_get_a_503_at_once(strict_server):
    held = [connect(strict_server.port) for _ in range(40)]
    time.sleep(0.2)
    extra = connect(strict_server.port)
    extra.settimeout(5)
    reply = extra.recv(4096)
    assert reply.startswith(b"HTTP/1.1 503") and b"retry-after" in reply.lower(), reply
    for s in held:
        s.close()
    extra.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server notices the closed ones and takes new clients
        try:
            if httpx.get(strict_server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not take new connections after the held ones closed")


def test_idle_connections_that_never_send_a_request_are_closed(strict_server):
    s = connect(strict_server.port)
    time.sleep(2.6)
    closed, _ = closed_by_server(s)
    assert closed
    s.close()
