"""Bad input over raw HTTP: always a 4xx in OpenAI's error shape, never a 500, and the server lives on."""
from __future__ import annotations

import httpx
import pytest

LONG = "x" * 70_000  # over the default 64,000-character prompt limit

CASES = [
    # (id, path, raw body, expected status, param named in the error)
    ("malformed-json", "/v1/completions", b'{"prompt": "x",', 400, None),
    ("not-an-object", "/v1/completions", b'["x"]', 400, None),
    ("missing-prompt", "/v1/completions", b'{"max_tokens": 5}', 400, "prompt"),
    ("prompt-wrong-type", "/v1/completions", b'{"prompt": 42}', 400, "prompt"),
    ("max-tokens-string", "/v1/completions", b'{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens"),
    ("max-tokens-negative", "/v1/completions", b'{"prompt": "x", "max_tokens": -3}', 400, "max_tokens"),
    ("max-tokens-zero", "/complete", b'{"code": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("max-tokens-huge", "/v1/completions", b'{"prompt": "x", "max_tokens": 10000000000}', 400, "max_tokens"),
    ("temperature-negative", "/v1/completions", b'{"prompt": "x", "temperature": -0.5}', 400, "temperature"),
    ("temperature-huge", "/complete", b'{"code": "x", "temperature": 7}', 400, "temperature"),
    ("temperature-nan", "/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("seed-negative", "/v1/completions", b'{"prompt": "x", "seed": -1}', 400, None),
    ("top-p-zero", "/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
    ("top-k-zero", "/complete", b'{"code": "x", "top_k": 0}', 400, "top_k"),
    ("stream-not-bool", "/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    ("unknown-field", "/v1/completions", b'{"prompt": "x", "max_token": 5}', 400, "max_token"),
    ("n-two", "/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n"),
    ("prompt-batch", "/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt"),
    ("empty-stop", "/v1/completions", b'{"prompt": "x", "stop": [""]}', 400, "stop"),
    ("lone-surrogate", "/v1/completions", b'{"prompt": "\\ud800"}', 400, "prompt"),
    ("non-utf8-bytes", "/v1/completions", b'{"prompt": "\xff\xfe\xfa"}', 400, None),
    ("latin1-code", "/complete", '{"code": "caf\u00e9"}'.encode("latin-1"), 400, None),
    ("prompt-too-large", "/v1/completions", b'{"prompt": "' + LONG.encode() + b'"}', 413, "prompt"),
    ("cache-weight-out-of-range", "/v1/completions", b'{"prompt": "x", "cache_weight": 2.0}', 400, "cache_weight"),
    ("unknown-model", "/v1/completions", b'{"prompt": "x", "model": "gpt-4"}', 404, "model"),
    ("too-many-context-files", "/complete",
     b'{"code": "x", "extra_context": [' + b",".join([b'{"path": "a.py", "text": "y"}'] * 9) + b"]}", 400,
     "extra_context"),
    ("context-too-large", "/v1/completions",
     b'{"prompt": "x", "extra_context": [{"path": "a.py", "text": "' + b"y" * 70_000 + b'"}]}', 413,
     "extra_context"),
    ("context-wrong-shape", "/v1/completions", b'{"prompt": "x", "extra_context": [{"file": "a.py"}]}', 400, None),
    ("event-unknown-kind", "/v1/events", b'{"id": "cmpl-1", "event": "loved", "language": "python"}', 400, "event"),
    ("event-bad-language", "/v1/events", b'{"id": "cmpl-1", "event": "shown", "language": "a b"}', 400,
     "language"),
]


@pytest.mark.parametrize("path, body, status, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_in_openai_shape(server, path, body, status, param):
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param or error["param"].startswith(param + "."), error


def test_body_over_the_byte_limit_is_413(server):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "' + b"x" * (2 << 20) + b'"}',
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413
    assert "error" in r.json()


def test_chunked_body_over_the_byte_limit_is_413(server):
    def body():  # no Content-Length: the server has to count
        yield b'{"prompt": "'
        for _ in range(25):
            yield b"x" * 50_000
        yield b'"}'

    r = httpx.post(server.url + "/v1/completions", content=body(), headers={"content-type": "application/json"},
                   timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_is_404_in_openai_shape(server):
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_server_still_serves_after_bad_input(server):
    assert httpx.get(server.url + "/ready").status_code == 200
    assert httpx.post(server.url + "/complete", json={"code": "x", "max_tokens": 2}).status_code == 200
    assert server.proc.poll() is None
    assert '"status": 500' not in server.log()
