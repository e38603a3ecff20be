"""One caller cannot hurt the others: a request with values sampling cannot compute is a 400 naming
the field, and a failure inside a decode step ends only the request that caused it."""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from engine import Engine, EngineConfig
from engine.model import Transformer
from engine.model_dir import load_model_dir

from .conftest import InProcessServer

UNCOMPUTABLE = [
    ("temperature", {"temperature": 1e-300}),
    ("temperature", {"temperature": 5e-324}),
    ("top_p", {"top_p": 1e-45}),
    ("top_p", {"top_p": 1e-300, "temperature": 0.7}),
]


def stream_lines(url: str, body: dict, started: threading.Event, out: list) -> None:
    """The status, then each non-empty line of a streamed completion; "cut off" if the connection broke."""
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            out.append(r.status_code)
            for line in r.iter_lines():
                if line:
                    out.append(line)
                    started.set()
    except httpx.TransportError:
        out.append("cut off")
    started.set()


@pytest.mark.parametrize("field, values", UNCOMPUTABLE, ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_uncomputable_sampling_values_are_a_400_and_other_streams_finish(server, field, values):
    started, lines = threading.Event(), []
    other = threading.Thread(target=stream_lines, args=(server.url, {
        "prompt": "def ", "max_tokens": 400, "temperature": 0.7, "seed": 1}, started, lines))
    other.start()
    assert started.wait(30)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4, **values}, timeout=30)
    other.join(60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]
    assert lines[0] == 200 and lines[-1] == "data: [DONE]", lines[-3:]
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("length", "stop")


class FailsLateModel(Transformer):
    """The real model, but any forward that reaches position `fail_at` raises: what a bug that hits
    one long generation looks like to the server."""
    fail_at = 40

    def forward(self, idx, positions=None, *args, **kwargs):
        if positions is not None and int(positions.max()) >= self.fail_at:
            raise RuntimeError("secret internals of a failed step")
        return super().forward(idx, positions, *args, **kwargs)


@pytest.fixture(scope="module")
def failing_server(tiny_model_dir):
    model, tokenizer, _ = load_model_dir(tiny_model_dir)
    failing = FailsLateModel(model.config)
    failing.load_state_dict(model.state_dict())
    engine = Engine(failing, tokenizer, config=EngineConfig(token_healing=False, cache_weight=0.0,
                                                            stop_loops=False))  # random text loops: run it long
    server = InProcessServer(engine)
    yield server
    server.stop()
    engine.close()


LONG = {"prompt": "def ", "max_tokens": 100, "temperature": 0}   # reaches position 40: fails
SHORT = {"prompt": "def ", "max_tokens": 20, "temperature": 0}   # never does


def test_a_stream_cut_off_by_a_failed_step_ends_with_an_error_event(failing_server):
    started, cut, whole = threading.Event(), [], []
    clients = [threading.Thread(target=stream_lines, args=(failing_server.url, body, started, out))
               for body, out in ((LONG, cut), (SHORT, whole))]
    for client in clients:
        client.start()
    for client in clients:
        client.join(30)
    assert cut[0] == 200 and whole[0] == 200
    assert whole[-1] == "data: [DONE]"
    assert json.loads(whole[-2][6:])["choices"][0]["finish_reason"] == "length"
    error = json.loads(cut[-1][6:])["error"]
    assert error["code"] == "engine_error" and "secret" not in error["message"], cut[-3:]
    assert "data: [DONE]" not in cut and len(cut) > 3  # some text came before the failure


def test_the_openai_client_raises_on_a_cut_off_stream_and_5xx_has_no_internal_text(failing_server):
    client = openai.OpenAI(base_url=failing_server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.completions.create(model="code-assistant", stream=True, **LONG):
            pass
    r = httpx.post(failing_server.url + "/v1/completions", json=LONG, timeout=30)
    assert r.status_code == 503 and "secret" not in r.text and r.json()["error"]["code"] == "engine_error"
    ok = httpx.post(failing_server.url + "/v1/completions", json=SHORT, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 20
