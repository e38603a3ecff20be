"""The sampling bounds have one owner, SamplingParams' table (engine/sampling_params.py): the
OpenAPI document shows its numbers, and a request just inside them is taken, just outside a 400
that names the field."""
from __future__ import annotations

import pytest

from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SAMPLING_BOUNDS, SMALLEST_POSITIVE
from http_api.app import create_app
from http_api.errors import APIError
from http_api.jobs import completion_input
from http_api.schemas import CompletionRequest, SimpleCompleteRequest
from http_api.settings import ServerSettings

SETTINGS = ServerSettings()
REQUESTS = ("CompletionRequest", "SimpleCompleteRequest")


def limits(name: str) -> tuple[float | None, float | None]:
    bound = SAMPLING_BOUNDS[name]
    return bound.low, SETTINGS.max_tokens_limit if name == "max_tokens" else bound.high  # the server's policy


@pytest.fixture(scope="module")
def document():
    return create_app(SETTINGS).openapi()


def test_the_document_shows_the_tables_bounds(document):
    schemas = document["components"]["schemas"]
    exposed = set()
    for request in REQUESTS:
        properties = schemas[request]["properties"]
        for name in SAMPLING_BOUNDS.keys() & properties.keys():
            exposed.add(name)
            branches = [b for b in properties[name].get("anyOf", [properties[name]])
                        if b.get("type") != "null" and "enum" not in b]
            assert len(branches) == 1, (request, name, properties[name])
            assert (branches[0].get("minimum"), branches[0].get("maximum")) == limits(name), (request, name)
        stop = properties["stop"]
        arrays = [b for b in stop.get("anyOf", [stop]) if b.get("type") == "array"]
        assert arrays[0]["maxItems"] == MAX_STOP_STRINGS and arrays[0]["items"]["maxLength"] == MAX_STOP_CHARS
        assert properties["max_prompt_tokens"]["description"]
    assert exposed == set(SAMPLING_BOUNDS)  # every sampling field reaches the API, bounded
    temperature = schemas["CompletionRequest"]["properties"]["temperature"]["anyOf"]
    assert {"type": "number", "enum": [0]} in temperature  # greedy


FIELDS = [(request, name) for request in (CompletionRequest, SimpleCompleteRequest)
          for name in sorted(SAMPLING_BOUNDS.keys() & request.model_fields.keys())]


@pytest.mark.parametrize("request_type, name", FIELDS, ids=[f"{r.__name__}-{n}" for r, n in FIELDS])
def test_requests_at_the_bounds_pass_and_beyond_them_name_the_field(request_type, name):
    low, high = limits(name)
    integer = SAMPLING_BOUNDS[name].integer
    for value in (low, high):
        if value is not None:
            made = completion_input(SETTINGS, body(request_type, name, value), "x")
            assert getattr(made.params, name) == value
    step = 1 if integer else 0.01
    beyond = [high + step] if high is not None else []
    beyond.append(low / 2 if low == SMALLEST_POSITIVE else low - step)
    for value in beyond:
        with pytest.raises(APIError) as err:
            completion_input(SETTINGS, body(request_type, name, value), "x")
        assert err.value.status == 400 and err.value.param == name


def body(request_type, name: str, value):
    text = {"prompt": "x"} if request_type is CompletionRequest else {"code": "x"}
    return request_type(**text, **{name: value})
