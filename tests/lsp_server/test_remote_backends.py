"""`backend`: the real `code-assistant lsp --remote URL` against local fakes of vLLM/TGI/LM Studio
(OpenAI-compatible), llama.cpp's /infill and Ollama's /api/generate (fake_servers.py), and the
OpenAI-compatible backend against a real `code-assistant serve`."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lsp_server.remote import CHARS_PER_TOKEN_ESTIMATE

from .fake_servers import ANSWER, CONTEXT, running
from .test_remote import KEY, http_server, http_server_log  # noqa: F401  (the real `code-assistant serve` fixture)
from .test_server import finish, initialize, inline_params, open_document, start

pytestmark = pytest.mark.timeout(120)

HELPERS_URI = "file:///work/project/helpers.py"
MAIN_URI = "file:///work/project/main.py"
HELPERS = "def mean(values):\n    return sum(values) / len(values)\n"
# Long enough that a 1024-token guess would cut it: the budget must come from the server.
FILLER = "".join(f"def helper_{i}(a, b):\n    return a + b * {i}\n\n" for i in range(150))
MAIN = "import helpers\n\n" + FILLER + "def average(values):\n    return "


async def complete_through(tiny_model_dir, url: str, settings: dict):
    client = await start(tiny_model_dir, "--remote", url)
    await initialize(client, {"debounceMs": 0, "remoteUrl": url, "prefetch": False, **settings})
    open_document(client, HELPERS, uri=HELPERS_URI)
    open_document(client, MAIN, uri=MAIN_URI)
    lines = MAIN.split("\n")
    result = await client.text_document_inline_completion_async(
        inline_params(len(lines) - 1, len(lines[-1]), invoked=False, uri=MAIN_URI))
    assert await finish(client) == 0
    return result


async def test_openai_compatible_server(tiny_model_dir):
    with running("openai") as (url, requests):
        result = await complete_through(tiny_model_dir, url, {"backend": "openai", "fimTemplate": "qwen"})
    assert [item.insert_text for item in result.items] == [ANSWER]
    [body] = requests
    assert body["model"] == "Qwen/Qwen2.5-Coder-1.5B"  # the name /v1/models gave
    assert body["prompt"].startswith("<|fim_prefix|>") and body["prompt"].endswith("<|fim_middle|>")
    assert "suffix" not in body and body["stop"] == ["\n"] and body["max_tokens"] == 48
    assert "Compare this snippet from helpers.py" in body["prompt"]
    assert len(body["prompt"]) > 3 * 1024  # the 4096-token context, not a 1024-token guess
    assert len(body["prompt"]) < 3 * CONTEXT


async def test_openai_compatible_server_with_the_suffix_field(tiny_model_dir):
    with running("openai") as (url, requests):
        await complete_through(tiny_model_dir, url, {"backend": "openai"})
    [body] = requests
    assert body["prompt"].endswith("    return ") and "suffix" in body


async def test_llama_cpp_infill_with_input_extra(tiny_model_dir):
    with running("llama.cpp") as (url, requests):
        result = await complete_through(tiny_model_dir, url, {"backend": "llama.cpp"})
    assert [item.insert_text for item in result.items] == [ANSWER]
    [body] = requests
    assert body["prompt"] == "    return "  # the cursor's line goes after FIM_MID
    assert body["input_prefix"].endswith("def average(values):\n") and "Compare this snippet" not in body["input_prefix"]
    assert any(e["filename"] == "helpers.py" and "def mean(values):" in e["text"] for e in body["input_extra"])
    assert body["n_predict"] == 48 and body["cache_prompt"] is True and body["stream"] is False


async def test_ollama_generate_with_suffix(tiny_model_dir):
    with running("ollama") as (url, requests):
        result = await complete_through(tiny_model_dir, url, {"backend": "ollama", "model": "qwen2.5-coder:1.5b"})
    assert [item.insert_text for item in result.items] == [ANSWER]
    [body] = requests
    assert body["model"] == "qwen2.5-coder:1.5b" and body["stream"] is False and "suffix" in body
    assert body["options"]["num_predict"] == 48 and body["options"]["num_ctx"] == 4096
    assert body["options"]["stop"] == ["\n"]


async def test_ollama_without_a_model_gives_nothing_and_keeps_running(tiny_model_dir):
    with running("ollama") as (url, requests):
        result = await complete_through(tiny_model_dir, url, {"backend": "ollama"})
    assert result.items == () and requests == []


async def test_openai_backend_against_a_real_code_assistant_serve(http_server, tiny_model_dir):  # noqa: F811
    client = await start(tiny_model_dir, "--remote", http_server, "--api-key", KEY)
    await initialize(client, {"debounceMs": 0, "backend": "openai", "prefetch": False})
    from .test_server import SOURCE
    open_document(client, SOURCE)
    answered = []
    for number, line in enumerate(SOURCE.split("\n")[:60]):
        if line.strip():
            result = await client.text_document_inline_completion_async(inline_params(number, len(line)))
            answered += [item.insert_text for item in result.items]
            if answered:
                break
    assert answered and answered[0].strip()
    assert await finish(client) == 0


@pytest.mark.parametrize("backend", ["llama.cpp", "ollama", "openai"])
async def test_context_tokens_bounds_what_each_backend_sends(tiny_model_dir, backend):
    # Servers that take text count tokens themselves: the language server keeps the budget by
    # trimming with the estimate, in engine/prompt.py's shares.
    with running(backend) as (url, requests):
        model = {"model": "qwen2.5-coder:1.5b"} if backend == "ollama" else {}
        await complete_through(tiny_model_dir, url, {"backend": backend, "contextTokens": 100, **model})
    [body] = requests
    if backend == "llama.cpp":
        sent = body["input_prefix"] + body["prompt"] + body["input_suffix"] + "".join(
            e["filename"] + e["text"] for e in body["input_extra"])
        assert body["prompt"] == "    return "
    else:
        sent = body["prompt"] + body.get("suffix", "")
        assert body["prompt"].endswith("    return ")
    assert 0 < len(sent) <= 100 * CHARS_PER_TOKEN_ESTIMATE


async def test_a_code_assistant_server_gets_one_opaque_user_per_document(tiny_model_dir):
    # The server supersedes a document's older request with its newer one (docs/http-api.md): the
    # user must be stable per document, differ between documents, and not carry the path.
    with running("openai") as (url, requests):  # speaks /v1/models and /v1/completions as serve does
        client = await start(tiny_model_dir, "--remote", url)
        await initialize(client, {"debounceMs": 0, "remoteUrl": url, "prefetch": False, "backend": "code-assistant",
                                  "model": "Qwen/Qwen2.5-Coder-1.5B", "typedAheadReuse": False})
        open_document(client, HELPERS, uri=HELPERS_URI)
        open_document(client, MAIN, uri=MAIN_URI)
        lines = MAIN.split("\n")
        for line, uri in ((len(lines) - 1, MAIN_URI), (len(lines) - 2, MAIN_URI), (1, HELPERS_URI)):
            text = (MAIN if uri == MAIN_URI else HELPERS).split("\n")[line]
            await client.text_document_inline_completion_async(inline_params(line, len(text), uri=uri))
        assert await finish(client) == 0
    main_first, main_second, helpers = [body["user"] for body in requests]
    assert main_first == main_second != helpers
    assert "main" not in main_first and "helpers" not in helpers


def test_the_remote_path_loads_no_torch():
    # An editor talking to a team server should not pay for torch (~1 s and ~300 MB to import).
    code = ("import sys; import lsp_server.cli, lsp_server.server; "
            "from lsp_server.context import build_prompt, select_neighbours, snippet_query; "
            "from lsp_server.remote import text_prompt; from lsp_server.remote_backends import create_remote_backend; "
            "from lsp_server.settings import Settings; "
            "files = select_neighbours(snippet_query('import helpers\\nhelpers.'), [('helpers.py', 'x = 1\\n')], 4); "
            "text_prompt(build_prompt('import helpers\\nhelpers.', '', 100, files, 'main.py'), 100); "
            "create_remote_backend(Settings(remote_url='http://127.0.0.1:1', backend='llama.cpp')); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
