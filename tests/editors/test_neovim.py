"""Neovim's built-in LSP client against the real `code-assistant lsp`, through the repository's own
editors/neovim/code_assistant.lua. CI installs Debian's neovim (0.7) with scripts/install-system-deps.sh;
that version has no inline completion, so this exercises the textDocument/completion path: a request
through the client, then the user's path (<C-x><C-o>, the menu, <C-y>)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("nvim_completion.lua")
NVIM = shutil.which("nvim")

if NVIM is None:
    if os.environ.get("CI") == "true":
        pytest.fail("nvim is missing: run scripts/install-system-deps.sh", pytrace=False)
    pytest.skip("nvim not installed (scripts/install-system-deps.sh installs it)", allow_module_level=True)

EXAMPLE = '''import json


def save_config(path, config):
    with open(path, "w") as handle:
        json.
'''
LINE = "        json."


def server_command(model_dir: Path) -> list[str]:
    """`code-assistant lsp` from the environment running pytest (its console script beside the
    interpreter, or the same entry point through the interpreter when the script is not there)."""
    script = Path(sys.executable).with_name("code-assistant")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from code_assistant_cli import main; sys.exit(main())"]
    return [*command, "lsp", "--model", str(model_dir)]


@pytest.fixture(scope="module")
def session(tiny_model_dir, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("nvim")
    source = work / "example.py"
    source.write_text(EXAMPLE)
    out = work / "result.json"
    env = {**os.environ, "CA_TEST_OUT": str(out), "CA_LUA_DIR": str(REPO / "editors" / "neovim"),
           "CA_SERVER_CMD": json.dumps(server_command(tiny_model_dir)), "CA_TEST_FILE": str(source),
           "CA_TEST_TIMEOUT_MS": "90000", "XDG_STATE_HOME": str(work / "state"), "XDG_CACHE_HOME": str(work / "cache")}
    proc = subprocess.run([NVIM, "--headless", "--clean", "-c", f"luafile {DRIVER}"], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"nvim wrote no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"{result['error']}\nnvim stderr: {proc.stderr[-2000:]}"
    return result


def test_setup_falls_back_to_the_omnifunc_before_0_11(session):
    major, minor, _ = (int(part) for part in session["nvim"].split("."))
    if (major, minor) < (0, 11):
        assert session["omnifunc"] == "v:lua.vim.lsp.omnifunc"


def test_completion_request_gets_our_item(session):
    responses = session["request"]
    assert len(responses) == 1 and responses[0].get("error") is None, responses
    completion = responses[0]["result"]
    assert completion["isIncomplete"] is True
    assert completion["items"], "the server answered with no item"
    item = completion["items"][0]
    assert item["detail"] == "code-assistant"
    assert item["textEdit"]["newText"].strip()
    position = {"line": 5, "character": len(LINE)}
    assert item["textEdit"]["range"]["start"] == position
    assert item["command"]["command"] == "codeAssistant.accept"
    assert item["command"]["arguments"][0]["language"] == "python"


def test_completion_menu_shows_our_item_and_accepting_inserts_it(session):
    assert session.get("menu"), "the completion menu never showed our item"
    word = session["menu"][0]["word"]
    assert word.strip()
    assert session["line_in_menu"] == LINE
    assert session["line_after_accept"] == LINE + word
