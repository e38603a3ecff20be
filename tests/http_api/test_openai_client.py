"""The official `openai` client against a real server, streaming and not."""
from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=30)


def served_model(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def test_models_lists_the_served_model(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [served_model(server)]


def test_non_streaming_completion(client, server):
    result = client.completions.create(model=served_model(server), prompt="def add(a, b):\n", max_tokens=12,
                                       temperature=0)
    assert result.id.startswith("cmpl-")
    assert result.object == "text_completion"
    assert result.model == served_model(server)
    assert result.system_fingerprint  # the model version
    choice = result.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 12
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_fim_suffix_and_stop_are_accepted(client, server):
    result = client.completions.create(model=served_model(server), prompt="def f(x):\n    return ",
                                       suffix="\n\nprint(f(2))\n", max_tokens=8, temperature=0.7, top_p=0.9,
                                       seed=3, stop=["\n\n"], user="alice")
    assert result.choices[0].finish_reason in ("stop", "length")


def test_streaming_completion_matches_non_streaming(client, server):
    model = served_model(server)
    prompt = "import os\nimport "
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert len({c.id for c in chunks}) == 1 and all(c.model == model for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sampled_streaming_with_seed_is_reproducible(client, server):
    model = served_model(server)

    def run() -> str:
        stream = client.completions.create(model=model, prompt="class ", max_tokens=15, temperature=0.9, seed=7,
                                           stream=True)
        return "".join(c.choices[0].text for c in stream if c.choices)

    assert run() == run()


def test_unknown_model_is_404_for_the_client(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_n_other_than_one_is_a_bad_request(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=served_model(server), prompt="x", max_tokens=2, n=2)
    assert e.value.body["param"] == "n"


def test_responses_name_model_and_version(server):
    r = httpx.post(server.url + "/complete", json={"code": "def main():\n", "max_tokens": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"completion", "tokens", "latency_ms", "id", "model", "model_version"}
    assert body["model"] == r.headers["x-model"] and body["model_version"] == r.headers["x-model-version"]
    assert 1 <= body["tokens"] <= 5 or body["finish_reason"] == "stop"
    for path in ("/health", "/ready", "/v1/models"):
        assert httpx.get(server.url + path).headers["x-model-version"] == body["model_version"]


def test_complete_accepts_bounded_extra_context(server):
    r = httpx.post(server.url + "/complete", json={"code": "x = ", "max_tokens": 3,
                                                   "extra_context": [{"path": "util.py", "text": "def g(): pass\n"}]})
    assert r.status_code == 200, r.text


def test_extra_context_teaches_names_from_other_files(server):
    """A name defined only in a neighbouring file is completed through the engine's cache model."""
    helpers = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n"
    body = {"code": "import helpers\n\nvalue = helpers.very_specific", "max_tokens": 6, "temperature": 0}
    plain = httpx.post(server.url + "/complete", json=body).json()["completion"]
    with_context = httpx.post(server.url + "/complete", json={
        **body, "extra_context": [{"path": "helpers.py", "text": helpers}]}).json()["completion"]
    assert with_context.startswith("_name_42(") and not plain.startswith("_name_42(")


def test_temperature_zero_answers_come_from_the_cache(server):
    body = {"prompt": "# cache me\ndef ", "max_tokens": 10, "temperature": 0}
    first = httpx.post(server.url + "/v1/completions", json=body).json()
    before = server.metric("tokens_generated_total")
    second = httpx.post(server.url + "/v1/completions", json=body).json()
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
    assert second["id"] != first["id"]
    assert server.metric("tokens_generated_total") == before  # the engine did not run again


def test_product_name_is_an_alias_for_the_served_model(server):
    """The language server's remote mode asks for "code-assistant" and may send its cacheWeight."""
    r = httpx.post(server.url + "/v1/completions", json={"model": "code-assistant", "prompt": "x = ", "max_tokens": 3,
                                                         "temperature": 0, "cache_weight": 0.3, "stop": ["\n"]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == served_model(server)
    before = server.metric("completion_events_total", event="accepted", language="go", model=served_model(server))
    httpx.post(server.url + "/v1/events", json={"id": r.json()["id"], "event": "accepted", "language": "go",
                                                "model": "code-assistant"}).raise_for_status()
    after = server.metric("completion_events_total", event="accepted", language="go", model=served_model(server))
    assert after == before + 1


def test_frequency_and_presence_penalties_reach_the_engine(client, server):
    model = served_model(server)
    prompt = "x = [1, 1, 1, 1, 1, 1, 1, 1, "
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    penalised = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                                          frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].finish_reason in ("stop", "length")
    assert isinstance(plain.choices[0].text, str) and isinstance(penalised.choices[0].text, str)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt=prompt, max_tokens=4, frequency_penalty=3.0)
    assert "frequency_penalty" in e.value.body["message"]


def test_models_report_the_context_length_and_usage_counts_the_prompt_the_engine_ran(server, long_model_dir):
    from engine import Engine

    model = httpx.get(server.url + "/v1/models").json()["data"][0]
    # What the served engine really holds: the same model with the server's (default) KV pool.
    engine = Engine.load(long_model_dir)
    try:
        assert model["context_length"] == engine.context_length
    finally:
        engine.close()
    # A prompt far longer than the context: usage reports the tokens the engine kept, not the text's.
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x = 1\n" * 3000, "max_tokens": 8,
                                                         "temperature": 0}, timeout=60).json()
    assert 0 < r["usage"]["prompt_tokens"] <= model["context_length"] - 8
    short = httpx.post(server.url + "/v1/completions", json={"prompt": "def f(", "max_tokens": 2}, timeout=30).json()
    assert 0 < short["usage"]["prompt_tokens"] < 10
