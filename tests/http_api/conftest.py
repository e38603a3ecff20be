"""Real servers for the end-to-end tests: `code-assistant serve` as a subprocess on a free loopback port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_model_dir

# Each test spends the budget of keys of its own (every route that costs work counts against it).
API_KEYS = ["key-rate-limited", "key-busy", "key-file-check", "key-spare", "key-env-check"]
FILE_KEYS, ENV_KEYS = API_KEYS[:3], API_KEYS[3:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).parent / "code-assistant"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "import sys, code_assistant_cli; sys.exit(code_assistant_cli.main())", "serve"]


class ServerProcess:
    """One `code-assistant serve` process; `url` once it answers /ready."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(serve_command() + ["--model", str(model_dir), "--port", str(self.port), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._wait_ready(timeout=60)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` in /metrics whose labels include `labels`."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name == name and all(w in label_text.rstrip("}").split(",") for w in wanted):
                total += float(value)
        return total

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory, code_bpe) -> Path:
    """A small model with a 4096-token context, so a generation runs long enough to cancel or drain
    (2,000 greedy tokens take ~1.5 s on two cores with the compiled decode step; a 2 x 64 model took 0.15 s)."""
    return make_model_dir(tmp_path_factory.mktemp("long-model"), ranks=code_bpe, block_size=4096, n_layer=6,
                          n_embd=384)


@pytest.fixture(scope="session")
def server(long_model_dir, tmp_path_factory):
    """The open server (no keys, no rate limit) most tests share. The random model's text loops, and
    the loop guard would end it early: these tests need generations that run to max_tokens. Requests
    wait for a batch slot as long as the queue allows (no --max-queue-wait-ms): these tests check
    that every request is served; shedding under overload is test_overload.py's."""
    proc = ServerProcess(long_model_dir, tmp_path_factory.mktemp("server") / "server.log", "--no-stop-loops",
                         "--max-queue-wait-ms", "0")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_keys() -> list[str]:
    return list(API_KEYS)


@pytest.fixture
def start_server(tmp_path):
    """A factory for a server of the test's own (one it may SIGTERM); stopped at teardown."""
    started: list[ServerProcess] = []

    def start(model_dir: Path, *args: str) -> ServerProcess:
        started.append(ServerProcess(model_dir, tmp_path / f"server{len(started)}.log", *args))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def guarded_server(tiny_model_dir, tmp_path_factory):
    """API keys, 5 requests/min per key, one batch slot and a one-request queue (to see 429 busy);
    no response cache, so identical requests all reach the engine."""
    tmp = tmp_path_factory.mktemp("guarded")
    keys = tmp / "keys.txt"
    keys.write_text("# team keys\n" + "\n".join(FILE_KEYS) + "\n\n")
    proc = ServerProcess(tiny_model_dir, tmp / "server.log", "--api-keys-file", str(keys), "--rate-limit", "5",
                         "--max-batch", "1", "--max-queue", "1", "--no-response-cache", env={"CODE_ASSISTANT_API_KEYS": ",".join(ENV_KEYS)})
    yield proc
    proc.stop()


class InProcessServer:
    """uvicorn serving `create_app(settings, engine)` from a thread of the test process: for tests
    that hand the server an engine of their own (one with a fault injected, say)."""

    def __init__(self, engine, settings=None):
        import threading

        import uvicorn

        from http_api.app import create_app
        from http_api.settings import ServerSettings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = settings or ServerSettings(port=self.port, response_cache_size=0)
        self.app = create_app(settings, engine=engine)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
