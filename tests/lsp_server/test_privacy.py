"""Excluded files never reach a completion: the real `code-assistant lsp` over stdio with the shipped
model (which copies well from its cache model), in a git workspace with a secret planted in each
kind of excluded file and probes written to elicit them; locally (the workspace index, neighbours,
the recent-chunks ring, prefetch) and through `remoteUrl` against a real `code-assistant serve`,
where what the language server sends as `extra_context` is recorded too.

Positive controls, the same kind of secret in files the rules allow, prove that the probes would
have drawn a secret out."""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import string
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from ..http_api.conftest import ServerProcess
from .test_server import CLI, capabilities, finish, inline_params, open_document

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]


def secret() -> str:
    rng = random.Random(time.time_ns())
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24))


def leaked(text: str, value: str) -> bool:
    """Any 6 characters of a random 24-character secret in a row: never by chance."""
    return any(value[i:i + 6] in text for i in range(len(value) - 5))


class Workspace:
    """A git repository with a secret in each kind of excluded file; `probes` maps each probe line
    to the secret it is written to draw out."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "project"
        self.home = tmp_path / "home"
        outside = tmp_path / "outside"
        for folder in (self.root / "secrets", self.root / "pkg", self.home / ".config", outside):
            folder.mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config")}
        self.env.pop("GIT_CONFIG_GLOBAL", None)
        git = lambda *args: subprocess.run(["git", *args], check=True, env=self.env, capture_output=True)  # noqa: E731
        git("init", "-q", str(self.root))
        (self.home / "global-ignore").write_text("globally_ignored.py\n")
        git("config", "--global", "core.excludesFile", str(self.home / "global-ignore"))
        (self.root / "pkg" / ".gitignore").write_text("local_settings.py\n")
        (self.root / ".git" / "info" / "exclude").write_text("notes.py\n")
        self.probes: dict[str, str] = {}
        self.plant("secrets/config.py", 'STRIPE_KEY = "{}"\n')                  # the user's glob: secrets/
        self.plant(".env.yml", 'db_password: "{}"\n')                            # a secret-looking name
        self.plant("globally_ignored.py", 'PRIVATE_KEY = "{}"\n')                # only the global excludes file
        self.plant("pkg/local_settings.py", 'GIT_TOKEN = "{}"\n')               # a nested .gitignore
        self.plant("notes.py", 'SLACK_TOKEN = "{}"\n')                           # .git/info/exclude
        self.plant(".env", 'API_TOKEN = "{}"\n')                                 # ... and config_link.py -> .env
        (self.root / "config_link.py").symlink_to(self.root / ".env")
        self.plant("../outside/keys.py", 'AWS_SECRET = "{}"\n')                  # ... and out_link.py -> it
        (self.root / "out_link.py").symlink_to(outside / "keys.py")
        # Allowed now; excluded while the server runs (a settings change, a new .gitignore rule).
        self.later = self.plant("later.py", 'LATER_KEY = "{}"\n', probe=False)
        self.rotated = self.plant("rotated.py", 'ROTATED_KEY = "{}"\n', probe=False)
        self.control = self.plant("control.py", 'CONTROL_KEY = "{}"\n', probe=False)
        # Typed into excluded files in the editor (didOpen, didChange).
        self.typed = {'NEW_KEY = "': secret(), 'db_password_2: "': secret()}
        self.probes.update(self.typed)
        (self.root / "app.py").write_text("import os\n")

    def plant(self, name: str, line: str, probe: bool = True) -> str:
        value = secret()
        path = self.root / name
        path.write_text(f"# settings\n{line.format(value)}")
        if probe:
            self.probes[line.split("{}")[0]] = value
        return value

    def secrets(self) -> dict[str, str]:
        return {**self.probes, "later": self.later, "rotated": self.rotated}


async def start(workspace: Workspace, **options):
    client = await ClientServerConfig(server_command=[CLI, "lsp", "--model", str(DEFAULT_MODEL)],
                                      server_env=workspace.env).start()
    await client.initialize_session(types.InitializeParams(
        capabilities=capabilities(), initialization_options={"debounceMs": 0, "exclude": ["secrets/"], **options},
        workspace_folders=[types.WorkspaceFolder(uri=workspace.root.as_uri(), name="project")]))
    return client


async def answers(client, workspace: Workspace, probe: str, number: int) -> list[str]:
    """What the server suggests at the end of `probe` in an ordinary file, invoked and while typing."""
    uri = (workspace.root / f"probe_{number}.py").as_uri()
    # The probe alone: its one name selects the neighbour snippets that hold it.
    open_document(client, probe, uri=uri)
    texts = []
    for invoked in (True, False):
        items = (await client.text_document_inline_completion_async(
            inline_params(0, len(probe), invoked=invoked, uri=uri))).items
        texts += [item.insert_text for item in items]
    client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    return texts


def change_whole(client, uri: str, version: int, text: str) -> None:
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))


async def open_the_excluded_files(client, workspace: Workspace) -> None:
    """The user opens every excluded file (neighbours), types secrets into two (the index's update
    path and the recent-chunks ring) and closes some (recent documents)."""
    names = ["secrets/config.py", ".env.yml", "globally_ignored.py", "pkg/local_settings.py", "notes.py", ".env",
             "config_link.py", "out_link.py"]
    for name in names:
        open_document(client, (workspace.root / name).read_text(), uri=(workspace.root / name).as_uri())
    for name, (probe, value) in zip(("secrets/new.py", ".env.yml"), workspace.typed.items()):
        uri = (workspace.root / name).as_uri()
        if name == "secrets/new.py":
            open_document(client, "# new\n", uri=uri)
        change_whole(client, uri, 5, f"# edited\n{probe}{value}\"\n")
    for name in ("notes.py", "config_link.py"):
        client.text_document_did_close(types.DidCloseTextDocumentParams(
            types.TextDocumentIdentifier((workspace.root / name).as_uri())))
    await asyncio.sleep(1.5)   # the index's debounce and the ring's flush


async def check_no_leak(client, workspace: Workspace, allowed: set[str] = frozenset()) -> list[str]:
    """Every probe asked; returns the report lines, asserts no excluded secret in any answer."""
    report, leaks = [], []
    secrets = {k: v for k, v in workspace.secrets().items() if k not in allowed}
    for number, probe in enumerate(list(workspace.probes) + ['LATER_KEY = "', 'ROTATED_KEY = "', 'token = "']):
        texts = await answers(client, workspace, probe, number)
        found = [name for name, value in secrets.items() if any(leaked(t, value) for t in texts)]
        report.append(f"{probe!r:24} -> {texts[:1]!r} leaked={found}")
        leaks += found
    print("\n" + "\n".join(report))
    assert not leaks, report
    return report


async def control_is_copied(client, workspace: Workspace, probe: str, value: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = await answers(client, workspace, probe, 99)
        if any(value[:12] in t for t in texts):
            return True
        await asyncio.sleep(0.3)
    print(f"{probe!r}: {texts!r}, not {value!r}")
    return False


async def stats(client) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codeAssistant.stats"))


async def test_no_excluded_secret_reaches_a_local_completion(tmp_path):
    workspace = Workspace(tmp_path)
    client = await start(workspace)
    try:
        deadline = time.monotonic() + 120
        while not (await stats(client))["workspace"].get("ready") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        # Positive controls: allowed files' secrets are copied from the workspace index.
        assert await control_is_copied(client, workspace, 'CONTROL_KEY = "', workspace.control)
        assert await control_is_copied(client, workspace, 'LATER_KEY = "', workspace.later)
        assert await control_is_copied(client, workspace, 'ROTATED_KEY = "', workspace.rotated)
        info = (await stats(client))["workspace"]
        assert info["ready"] and info["files"] == 4, info      # app, later, rotated, control

        # A settings change and a new ignore rule take their files out at once.
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codeAssistant": {"exclude": ["secrets/", "later.py"]}}))
        (workspace.root / ".gitignore").write_text("rotated.py\n")
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(changes=[types.FileEvent(
            uri=(workspace.root / ".gitignore").as_uri(), type=types.FileChangeType.Created)]))
        await open_the_excluded_files(client, workspace)
        assert (await stats(client))["workspace"]["files"] == 2, await stats(client)   # app, control

        await check_no_leak(client, workspace)
        # The neighbours still carry what they may: an open allowed file is copied from.
        open_document(client, (workspace.root / "control.py").read_text(), uri=(workspace.root / "control.py").as_uri())
        assert await control_is_copied(client, workspace, 'CONTROL_KEY = "', workspace.control, 10)

        # A rule written with no event at all (a client without file watchers): the server notices.
        (workspace.root / ".gitignore").write_text("rotated.py\ncontrol.py\n")
        deadline = time.monotonic() + 10
        while (await stats(client))["workspace"]["files"] != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await stats(client))["workspace"]["files"] == 1          # app.py
        texts = await answers(client, workspace, 'CONTROL_KEY = "', 98)
        assert not any(leaked(t, workspace.control) for t in texts), texts
    finally:
        assert await finish(client) == 0


class Recorder:
    """A proxy in front of a real `code-assistant serve` that keeps every request body."""

    def __init__(self, target: str):
        self.target, self.bodies = target, []
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(path: str, request: Request):
            body = await request.body()
            if body:
                self.bodies.append(json.loads(body))
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.request(request.method, f"{self.target}/{path}", content=body,
                                            headers={"content-type": "application/json"})
            return Response(answer.content, answer.status_code, media_type="application/json")

        self.app = app

    @contextmanager
    def running(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)


async def test_no_excluded_secret_reaches_a_remote_server_or_its_completions(tmp_path):
    workspace = Workspace(tmp_path)
    server = ServerProcess(DEFAULT_MODEL, tmp_path / "serve.log")
    recorder = Recorder(server.url)
    try:
        with recorder.running() as url:
            client = await start(workspace, remoteUrl=url)
            try:
                await open_the_excluded_files(client, workspace)
                await check_no_leak(client, workspace, allowed={"later", "rotated"})
                # Positive control: an open allowed file reaches the server as extra_context and is copied.
                open_document(client, (workspace.root / "control.py").read_text(),
                              uri=(workspace.root / "control.py").as_uri())
                assert await control_is_copied(client, workspace, 'CONTROL_KEY = "', workspace.control, 20)
            finally:
                assert await finish(client) == 0
        sent = json.dumps(recorder.bodies)
        assert any("extra_context" in body for body in recorder.bodies)
        excluded = {k: v for k, v in workspace.secrets().items() if k not in ("later", "rotated")}
        assert [name for name, value in excluded.items() if value in sent] == []
        assert workspace.control in sent
        print(f"\n{len(recorder.bodies)} requests recorded; extra_context paths: "
              f"{sorted({c['path'] for b in recorder.bodies for c in b.get('extra_context', []) if isinstance(c, dict)})}")
    finally:
        server.stop()
