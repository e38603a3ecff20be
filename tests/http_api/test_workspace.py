"""`code-assistant serve --workspace`: a team's repository is context for every request, and follows changes."""
from __future__ import annotations

import subprocess
import time

import httpx

from .conftest import ServerProcess, serve_command

DEFINES = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n"


def complete(server: ServerProcess, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "stop": ["\n"]}
    return httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]


def eventually(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_name_defined_only_in_the_workspace_is_completed_and_changes_are_followed(tiny_model_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "helpers.py").write_text(DEFINES)
    (repo / ".gitignore").write_text("private.py\n")
    (repo / "private.py").write_text("def ignored_secret_name_99(a):\n    pass\n")
    server = ServerProcess(tiny_model_dir, tmp_path / "serve.log", "--workspace", str(repo), "--workspace-rescan", "0.5")
    try:
        assert eventually(lambda: complete(server, "value = very_specific").startswith("_name_42(")), server.log()
        assert "secret_name_99" not in complete(server, "value = ignored_secret")       # gitignored
        (repo / "later.py").write_text("def another_unique_thing_77(a, b):\n    return a\n")
        assert eventually(lambda: complete(server, "x = another_unique").startswith("_thing_77"), 10), server.log()
    finally:
        server.stop()


def test_an_index_file_built_ahead_is_served(tiny_model_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "helpers.py").write_text(DEFINES)
    index = tmp_path / "repo.index"
    cli = serve_command()[:-1] if serve_command()[-1] == "serve" else serve_command()
    built = subprocess.run(cli + ["index", str(repo), "--out", str(index), "--model", str(tiny_model_dir)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    bad = subprocess.run(serve_command() + ["--model", str(tiny_model_dir), "--workspace", str(repo / "helpers.py")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a code-assistant index" in bad.stderr
    server = ServerProcess(tiny_model_dir, tmp_path / "serve.log", "--workspace", str(index))
    try:
        assert eventually(lambda: complete(server, "value = very_specific").startswith("_name_42(")), server.log()
    finally:
        server.stop()
