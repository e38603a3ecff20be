"""`--model OWNER/NAME[@REVISION]` through the real CLI: from huggingface_hub's cache laid out as it
lays it (HF_HUB_OFFLINE=1), and from a fake hub on a loopback port (HF_ENDPOINT) that answers the
requests huggingface_hub makes: the revision API, the tree listing, and `resolve/REV/FILE` with
X-Repo-Commit, ETag and Content-Length, ranges included (resumed downloads)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.http_api.conftest import ServerProcess

pytest.importorskip("huggingface_hub", reason="huggingface_hub resolves hub names (a runtime dependency)")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "owner/tiny-coder"
# Files a real repository carries that the engine never reads: they must not be downloaded.
NOT_NEEDED = {"pytorch_model.bin": b"not a pickle the engine would load", "README.md": b"# tiny\n"}


def cli(*args: str, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    code = "import sys, code_assistant_cli; sys.exit(code_assistant_cli.main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=300)


def hub_env(home: Path, **extra: str) -> dict:
    env = {"HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", **extra}
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture(scope="module")
def repo_files(tiny_model_dir) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in Path(tiny_model_dir).iterdir() if p.is_file()}
    return {**files, **NOT_NEEDED}


def etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fill_cache(home: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """huggingface_hub's cache layout: blobs named by ETag, snapshots/COMMIT/FILE linking to them,
    refs/main holding the commit."""
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        (root / "blobs" / etag(data)).write_bytes(data)
        (root / "snapshots" / commit / name).symlink_to(Path("../../blobs") / etag(data))
    (root / "refs" / "main").write_text(commit)
    return root


class FakeHub:
    """The Hugging Face hub's download API for one repository, on a loopback port."""

    def __init__(self, repo: str, files: dict[str, bytes]):
        self.repo, self.files, self.requests = repo, files, []
        self.cut_once: set[str] = set()  # files whose first download the connection drops half-way
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                hub.requests.append((self.command, self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                api = f"/api/models/{hub.repo}/"
                if path.startswith(api + "revision/") and path.rsplit("/", 1)[1] not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                if path.startswith(api + "revision/"):
                    siblings = [{"rfilename": n} for n in hub.files]
                    return self.json({"id": hub.repo, "modelId": hub.repo, "sha": COMMIT, "private": False,
                                      "siblings": siblings}, body)
                if path.startswith(api + "tree/"):
                    return self.json([{"type": "file", "path": n, "size": len(d), "oid": etag(d)[:40]}
                                      for n, d in hub.files.items()], body)
                prefix = f"/{hub.repo}/resolve/"
                if path.startswith(prefix):
                    _, _, name = path[len(prefix):].partition("/")
                    if name in hub.files:
                        return self.file(hub.files[name], body, cut=body and name in hub.cut_once)
                self.error(404, "EntryNotFound" if path.startswith((api, prefix)) else "RepoNotFound")

            def error(self, status: int, code: str):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def json(self, payload, body: bool):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def file(self, data: bytes, body: bool, cut: bool = False):
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][len("bytes="):].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag(data)}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if cut:
                    hub.cut_once.clear()
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif body:
                    self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> set[str]:
        return {p.split("?")[0].rsplit("/resolve/", 1)[1].split("/", 1)[1]
                for method, p, _ in self.requests if method == "GET" and "/resolve/" in p}


def test_a_cached_name_serves_completions_offline(repo_files, tmp_path):
    fill_cache(tmp_path / "hf", REPO, repo_files)
    server = ServerProcess(REPO, tmp_path / "server.log", env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"))
    try:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "def add(a, b):\n    return ", "max_tokens": 8,
                                                            "temperature": 0}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == REPO
        assert isinstance(r.json()["choices"][0]["text"], str)
    finally:
        server.stop()


def test_a_name_downloads_only_what_the_engine_reads_then_works_offline(repo_files, tmp_path):
    home = tmp_path / "hf"
    with FakeHub(REPO, repo_files) as hub:
        done = cli("quantize", "--model", f"{REPO}@main", "--out", tmp_path / "int8",
                   env=hub_env(home, HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token"))
        assert done.returncode == 0, done.stderr
        assert hub.downloaded() == set(repo_files) - set(NOT_NEEDED)
        assert all(h.get("authorization") == "Bearer hf_test_token" or h.get("Authorization") == "Bearer hf_test_token"
                   for _, _, h in hub.requests)
    snapshot = home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "config.json").is_file() and (tmp_path / "int8" / "config.json").is_file()
    # The hub is gone: the cache answers, and HF_HUB_OFFLINE=1 is respected.
    again = cli("quantize", "--model", REPO, "--out", tmp_path / "int8-again", env=hub_env(home, HF_HUB_OFFLINE="1"))
    assert again.returncode == 0, again.stderr


def test_a_dropped_download_is_taken_up_again_and_completes(repo_files, tmp_path):
    """The connection drops half-way through the weights: asked again from where the file stopped."""
    home = tmp_path / "hf"
    weights = repo_files["model.safetensors"]
    blobs = home / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    with FakeHub(REPO, repo_files) as hub:
        hub.cut_once.add("model.safetensors")
        done = cli("quantize", "--model", REPO, "--out", tmp_path / "int8", env=hub_env(home, HF_ENDPOINT=hub.url))
        assert done.returncode == 0, done.stderr
    ranges = [h.get("Range") or h.get("range") for m, p, h in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(weights) // 2  # what had arrived
    assert (blobs / etag(weights)).read_bytes() == weights


def test_a_download_a_killed_process_left_is_resumed_by_the_next(repo_files, tmp_path):
    """What a process killed mid-download leaves (blobs/ETAG.part, the weights' first bytes): the next
    asks only for the rest, and the model loads. huggingface_hub alone would start over."""
    home = tmp_path / "hf"
    weights = repo_files["model.safetensors"]
    blobs = home / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    kept = len(weights) // 3
    (blobs / f"{etag(weights)}.part").write_bytes(weights[:kept])
    with FakeHub(REPO, repo_files) as hub:
        done = cli("quantize", "--model", REPO, "--out", tmp_path / "int8", env=hub_env(home, HF_ENDPOINT=hub.url))
        assert done.returncode == 0, done.stderr
    ranges = [h.get("Range") or h.get("range") for m, p, h in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == [f"bytes={kept}-"]
    assert (blobs / etag(weights)).read_bytes() == weights
    assert not (blobs / f"{etag(weights)}.part").exists()


def test_a_local_path_wins_over_a_name(tiny_model_dir, tmp_path):
    local = tmp_path / REPO
    local.mkdir(parents=True)
    for p in Path(tiny_model_dir).iterdir():
        if p.is_file():
            (local / p.name).write_bytes(p.read_bytes())
    done = cli("quantize", "--model", REPO, "--out", tmp_path / "int8", env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name, offline", [("nobody/nothing", True), ("nobody/nothing", False),
                                           (f"{REPO}@no-such-branch", False), ("not a name!", True),
                                           ("qwen2.5-coder:0.5b", True)])
def test_a_name_that_cannot_be_resolved_is_one_line_and_exit_2(name, offline, repo_files, tmp_path):
    with FakeHub(REPO, repo_files) as hub:
        env = hub_env(tmp_path / "hf", **({"HF_HUB_OFFLINE": "1"} if offline else {"HF_ENDPOINT": hub.url}),
                      OLLAMA_MODELS=str(tmp_path / "ollama"))
        commands = [["quantize", "--model", name, "--out", tmp_path / "out"]]
        if name == "nobody/nothing" and offline:
            commands.append(["eval", "--model", name, "--src", tmp_path])
        for command in commands:
            done = cli(*command, env=env)
            assert done.returncode == 2, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "Traceback" not in done.stderr
