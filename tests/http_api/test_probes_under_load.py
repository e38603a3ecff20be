"""Probes are never starved: one address holding 1,000 idle connections, or many addresses filling
the server's cap together, leave /health and /ready answering another address within a second.
(Every 127.x.y.z address is the loopback interface on Linux: the hog connects from 127.0.0.1, the
probe from 127.0.0.2, as a kubelet on the node would from its own address.)"""
from __future__ import annotations

import resource
import socket
import time

import httpx
import pytest

from .conftest import ServerProcess

HOG_CONNECTIONS = 1000


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * HOG_CONNECTIONS
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below the {wanted} descriptors this test holds")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    # A long header timeout: the hog's connections stay open for the whole test.
    proc = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("probes") / "server.log", "--header-timeout", "60")
    yield proc
    proc.stop()


def hold(port: int, count: int, source: str) -> list[socket.socket]:
    """`count` connections from `source` that never send a byte (those the server refuses are closed by it)."""
    held = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def probe(url: str, source: str) -> list[tuple[str, int, float]]:
    """(path, status, seconds) of /health and /ready, each on a fresh connection from `source`."""
    results = []
    for path in ("/health", "/ready"):
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5) as client:
            started = time.monotonic()
            status = client.get(url + path).status_code
            results.append((path, status, time.monotonic() - started))
    return results


def assert_probes_answered(url: str, source: str, tries: int = 10) -> None:
    for _ in range(tries):
        for path, status, seconds in probe(url, source):
            assert status == 200 and seconds < 1.0, (path, status, seconds)


def test_one_address_holding_1000_idle_connections_does_not_starve_the_probes(server):
    held = hold(server.port, HOG_CONNECTIONS, "127.0.0.1")
    try:
        time.sleep(0.5)  # the server has taken (or turned away) every one of them
        assert_probes_answered(server.url, "127.0.0.2")
        # The hog got its share and no more: the rest were answered 503 and closed.
        refused = 0
        for s in held:
            s.settimeout(0.01)
            try:
                refused += s.recv(4096).startswith(b"HTTP/1.1 503")
            except (socket.timeout, OSError):
                pass
        assert refused >= HOG_CONNECTIONS - 100, refused
    finally:
        for s in held:
            s.close()


def test_many_addresses_filling_the_servers_cap_do_not_starve_the_probes(tiny_model_dir, tmp_path):
    proc = ServerProcess(tiny_model_dir, tmp_path / "server.log", "--header-timeout", "60",
                         "--max-connections", "200", "--max-connections-per-client", "20")
    held: list[socket.socket] = []
    try:
        for i in range(20):  # 20 addresses x 20 connections: twice the server's cap
            held += hold(proc.port, 20, f"127.0.1.{i + 1}")
        time.sleep(0.5)
        assert_probes_answered(proc.url, "127.0.0.2")
    finally:
        for s in held:
            s.close()
        proc.stop()
