"""The version a server reports (X-Model-Version, `model_version`) comes from the directory the
engine read, whatever `--model` named: here a Hugging Face name resolved from huggingface_hub's
cache, served by the real CLI."""
from __future__ import annotations

import httpx

from http_api.app import model_version
from tests.engine.test_hub import COMMIT, REPO, fill_cache, hub_env, repo_files  # noqa: F401 (a fixture)
from tests.http_api.conftest import ServerProcess


def test_a_hub_name_reports_the_version_of_its_snapshot(repo_files, tmp_path):  # noqa: F811
    snapshot = fill_cache(tmp_path / "hf", REPO, repo_files) / "snapshots" / COMMIT
    expected = model_version(snapshot)
    assert expected != "unknown"
    server = ServerProcess(REPO, tmp_path / "server.log", env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"))
    try:
        r = httpx.post(server.url + "/complete", json={"code": "def add(a, b):\n    return ", "max_tokens": 4},
                       timeout=30)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == r.headers["x-model-version"] == expected
