"""The real VS Code for tests and benchmarks: code-server (VS Code 1.100 in the browser, from npm) with
the packaged extension installed, driven in headless Chromium by vscode_e2e.mjs through
playwright-core (a devDependency of vscode-client).

Everything is local: code-server is installed once by scripts/setup-code-server.sh into
$CODE_ASSISTANT_CODE_SERVER_DIR (default ~/.cache/code-assistant/code-server-4.100.3); each run gets
a fresh user-data, extensions and XDG folder under its own tmp directory.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "vscode-client"
DRIVER = Path(__file__).with_name("vscode_e2e.mjs")
CODE_SERVER_VERSION = "4.100.3"
CHROMIUM = "/usr/bin/chromium"


class Unavailable(Exception):
    """A tool the real-VS-Code run needs cannot be had here (the message says which and why)."""


def code_server_dir() -> Path:
    default = Path.home() / ".cache" / "code-assistant" / f"code-server-{CODE_SERVER_VERSION}"
    return Path(os.environ.get("CODE_ASSISTANT_CODE_SERVER_DIR", default))


def _run(command: list[str], cwd: Path, timeout: float, what: str, env: dict | None = None) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{what}: {error}") from None
    if result.returncode != 0:
        raise Unavailable(f"{what} failed (exit {result.returncode}): {(result.stdout + result.stderr)[-1500:]}")


def ensure_code_server() -> Path:
    """The code-server executable, installed on first use (~1 min, ~300 MB, npm registry only)."""
    for tool, package in (("node", "nodejs"), ("npm", "npm"), (CHROMIUM, "chromium"), ("rg", "ripgrep")):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is missing (Debian package {package}; scripts/install-system-deps.sh)")
    home = code_server_dir()
    binary = home / "node_modules" / ".bin" / "code-server"
    stamp = home / ".complete"
    if not stamp.exists():
        print(f"installing code-server {CODE_SERVER_VERSION} into {home} (once)", file=sys.stderr)
        _run(["sh", str(REPO / "scripts" / "setup-code-server.sh"), str(home)], REPO, 900, "installing code-server")
        stamp.write_text(CODE_SERVER_VERSION + "\n")
    if not binary.exists():
        raise Unavailable(f"code-server is not at {binary}")
    return binary


def ensure_extension() -> Path:
    """vscode-client compiled and packaged (`npm run package`), and its node_modules (playwright-core)."""
    if not (CLIENT / "node_modules" / "playwright-core").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], CLIENT, 600, "npm ci in vscode-client")
    _run(["npm", "run", "compile"], CLIENT, 300, "compiling the extension")
    _run(["npm", "run", "package"], CLIENT, 300, "packaging the extension")
    vsix = CLIENT / "code-assistant.vsix"
    if not vsix.exists():
        raise Unavailable("npm run package wrote no code-assistant.vsix")
    return vsix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def code_server(binary: Path, vsix: Path, workspace: Path, home: Path, user_settings: dict) -> Iterator[dict]:
    """A running code-server with the extension, for `workspace`; yields its url and folders."""
    user_data, extensions = home / "user-data", home / "extensions"
    (user_data / "User").mkdir(parents=True, exist_ok=True)
    extensions.mkdir(parents=True, exist_ok=True)
    (user_data / "User" / "settings.json").write_text(json.dumps(user_settings, indent=2))
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "xdg-config"), "XDG_DATA_HOME": str(home / "xdg-data"),
           "XDG_CACHE_HOME": str(home / "xdg-cache")}
    env.pop("VSCODE_IPC_HOOK_CLI", None)
    common = ["--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    _run([str(binary), *common, "--install-extension", str(vsix)], home, 120, "installing the .vsix", env)
    port = free_port()
    log = (home / "code-server.log").open("w")
    process = subprocess.Popen(
        [str(binary), "--auth", "none", "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
         "--enable-proposed-api", "code-assistant.code-assistant", "--bind-addr", f"127.0.0.1:{port}",
         *common, str(workspace)], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"code-server did not start: {(home / 'code-server.log').read_text()[-1500:]}")
                time.sleep(0.3)
        yield {"url": url, "user_data": user_data, "settings": user_data / "User" / "settings.json"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def run_driver(scenario: str, url: str, workspace: Path, out: Path, timeout_s: float, **options) -> dict:
    """Runs vscode_e2e.mjs; its screenshots go to `out`, its findings come back as a dict."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CA_SCENARIO": scenario, "CA_URL": url, "CA_WORKSPACE": str(workspace),
           "CA_OUT": str(out), "CA_CLIENT_DIR": str(CLIENT), "CA_CHROMIUM": CHROMIUM,
           "CA_OPTIONS": json.dumps(options)}
    try:
        proc = subprocess.run(["node", str(DRIVER)], env=env, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the VS Code driver ran past {timeout_s} s; screenshots in {out}") from error
    result_file = out / "result.json"
    assert result_file.exists(), f"the driver wrote no result (exit {proc.returncode}): {proc.stderr[-3000:]}"
    result = json.loads(result_file.read_text())
    result["driver_stderr"] = proc.stderr[-3000:]
    return result


def extension_log(user_data: Path) -> str:
    """The extension's "Code Assistant" output channel, as VS Code wrote it to disk."""
    logs = sorted((user_data / "logs").glob("*/exthost*/code-assistant.code-assistant/Code Assistant.log"))
    return "\n".join(path.read_text() for path in logs)
