"""`code-assistant serve --workspace`: a team's repository is context for every request, and follows changes."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from .conftest import ServerProcess, serve_command

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
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


def leaked(text: str, value: str) -> bool:
    return any(value[i:i + 6] in text for i in range(len(value) - 5))


def test_excluded_files_and_links_to_them_never_come_back(tmp_path):
    """The shipped model copies from its cache model: the allowed file's token comes back (the
    control), the excluded ones never do, whether served from the folder or from an index file
    that `code-assistant index` wrote (with --exclude and a .code-assistant-ignore)."""
    repo = tmp_path / "repo"
    (repo / "vault").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, capture_output=True)
    secrets = {"env_yml": "Hq3ZrX81vLmT0aPd", "env": "Wd72KpQsY0nV4eLx", "ignore_file": "Tc5NbU19oJqE2rGz",
               "flag": "Za0MxE47tRbQ9sVk"}
    (repo / ".env.yml").write_text(f'db_password: "{secrets["env_yml"]}"\n')
    (repo / ".env").write_text(f'token = "sk-{secrets["env"]}"\n')
    (repo / "config_link.py").symlink_to(repo / ".env")
    (repo / ".code-assistant-ignore").write_text("vault/\n")
    (repo / "vault" / "keys.py").write_text(f'vault_key = "{secrets["ignore_file"]}"\n')
    (repo / "deploy_keys.py").write_text(f'deploy_key = "{secrets["flag"]}"\n')
    control = "Jf8WcYp26nDsK3Ua"
    (repo / "control.py").write_text(f'control_key = "{control}"\n')
    probes = ['token = "sk-', 'db_password: "', 'vault_key = "', 'deploy_key = "', 'api_key = "']

    def check(server: ServerProcess) -> None:
        assert eventually(lambda: control in complete_long(server, 'control_key = "')), server.log()
        for probe in probes:
            text = complete_long(server, probe)
            assert not any(leaked(text, value) for value in secrets.values()), (probe, text)

    server = ServerProcess(DEFAULT_MODEL, tmp_path / "serve.log", "--workspace", str(repo), "--exclude", "deploy_*.py")
    try:
        check(server)
    finally:
        server.stop()
    index = tmp_path / "repo.index"
    cli = serve_command()[:-1]
    built = subprocess.run(cli + ["index", str(repo), "--out", str(index), "--exclude", "deploy_*.py"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["files"] == 1       # control.py
    server = ServerProcess(DEFAULT_MODEL, tmp_path / "serve2.log", "--workspace", str(index))
    try:
        check(server)
    finally:
        server.stop()


def complete_long(server: ServerProcess, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0}
    return httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
