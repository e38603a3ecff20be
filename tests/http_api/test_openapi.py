"""The OpenAPI document says what the server really sends, and schemathesis (every check) finds
nothing against the running server in a bounded run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ServerProcess

# Limits on the sum of several fields (prompt plus suffix characters, extra_context bytes) cannot
# be written in JSON Schema: for those the server answers 413, which both data checks must accept.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "413", "429"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413", "429"]
"""


@pytest.fixture(scope="module")
def fuzzed_server(tiny_model_dir, tmp_path_factory):
    # The tiny model's 128-token context keeps each generated completion short.
    proc = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("fuzzed") / "server.log")
    yield proc
    proc.stop()


def test_the_document_lists_what_the_server_sends(fuzzed_server):
    doc = httpx.get(fuzzed_server.url + "/openapi.json").json()
    completions = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert "422" not in json.dumps(doc["paths"])
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(completions)
    assert {"application/json", "text/event-stream"} <= set(completions["200"]["content"])
    assert set(doc["paths"]["/v1/models"]["get"]["responses"]) >= {"200", "401", "429"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    bounds = doc["components"]["schemas"]["CompletionRequest"]["properties"]["max_tokens"]
    assert bounds["minimum"] == 1 and bounds["maximum"] == 2048
    r = httpx.post(fuzzed_server.url + "/v1/completions", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "None" not in r.json()["error"]["message"], r.text


def test_a_trailing_slash_is_not_redirected_to_the_clients_host(fuzzed_server):
    r = httpx.get(fuzzed_server.url + "/v1/models/", headers={"host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_nothing(fuzzed_server, tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        if os.environ.get("CI") == "true":
            pytest.fail("schemathesis is missing: it is in the dev extra (pip install -e '.[dev]')")
        pytest.skip("schemathesis not installed (the dev extra)")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    started = time.monotonic()
    # Bounded: 40 examples an operation, fixed seed (reproducible), one worker, no stored database.
    proc = subprocess.run([st, "--config-file", str(config), "run", fuzzed_server.url + "/openapi.json",
                           "--checks", "all", "--max-examples", "40", "--workers", "1", "--seed", "4711",
                           "--generation-database", ":memory:", "--request-timeout", "20"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    summary = [line for line in proc.stdout.splitlines() if "generated" in line]
    print(f"schemathesis: {summary[-1].strip() if summary else '?'} in {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-6000:]
