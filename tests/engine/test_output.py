"""Output alone: tokens in, text and chunks out, and the reason a request ends."""
from __future__ import annotations

import pytest
import torch

from engine.model_dir import load_model_dir
from engine.output import Output
from engine.request import Request
from engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model_dir(tiny_model_dir)[1]


def request_for(params: SamplingParams, chunks: list, prompt_ids=(1, 2, 3), **fields) -> Request:
    return Request(list(prompt_ids), params, chunks.append, tokens=list(prompt_ids), **fields)


def feed(output: Output, request: Request, text: str, tokenizer) -> str | None:
    """Accept `text`'s tokens one by one; the finish reason, if one comes."""
    for token in tokenizer.encode(text):
        reason = output.accept(request, token)
        if reason is not None:
            output.finish(request, reason)
            return reason
    return None


def test_tokens_become_the_text_in_chunks_and_max_tokens_ends_with_length(tokenizer):
    output, chunks = Output(tokenizer, context_end=128), []
    text = "def add(a, b):\n    return a + b\n"
    n = len(tokenizer.encode(text))
    request = request_for(SamplingParams(max_tokens=n), chunks)
    assert feed(output, request, text, tokenizer) == "length"
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == "length" and chunks[-1].tokens == n and chunks[-1].prompt_tokens == 3
    assert request.output_ids == request.tokens[3:] and output.tokens_generated == n


def test_the_earliest_stop_string_cuts_and_the_text_held_back_never_shows_the_stop(tokenizer):
    output, chunks = Output(tokenizer, context_end=128), []
    request = request_for(SamplingParams(max_tokens=50, stop=["\n\n", "):"]), chunks)
    assert feed(output, request, "f(a, b):\n\n    pass", tokenizer) == "stop"
    assert "".join(c.text for c in chunks) == "f(a, b"


def test_a_special_token_stops_without_becoming_text_and_the_context_end_is_length(tokenizer):
    output, chunks = Output(tokenizer, context_end=128), []
    request = request_for(SamplingParams(max_tokens=50), chunks)
    eot = min(tokenizer.special_ids)
    assert output.accept(request, eot) == "stop" and request.output_ids == []
    near_end = request_for(SamplingParams(max_tokens=50), [], prompt_ids=range(127))
    assert output.accept(near_end, tokenizer.encode("x")[0]) == "length"


def test_healed_bytes_the_user_has_are_skipped_and_not_counted(tokenizer):
    output, chunks = Output(tokenizer, context_end=128), []
    request = request_for(SamplingParams(max_tokens=50), chunks, heal=b"ret", skip_bytes=3)
    feed(output, request, "return x", tokenizer)
    output.finish(request, "stop")
    assert "".join(c.text for c in chunks) == "urn x"
    assert request.generated == len(request.output_ids) - request.healing_tokens


def test_choose_keeps_to_the_healing_prefix_and_never_picks_padding_rows(tokenizer):
    output = Output(tokenizer, context_end=128)
    logits = torch.zeros(tokenizer.n_vocab + 40)
    logits[tokenizer.n_vocab:] = 100.0  # an embedding padded past the tokenizer
    request = request_for(SamplingParams(max_tokens=5), [], heal=b"ret")
    token = output.choose(request, logits)
    assert token < tokenizer.n_vocab
    spelled = tokenizer.token_bytes()[token]
    assert spelled.startswith(b"ret") or b"ret".startswith(spelled)


def test_a_failing_callback_cancels_only_its_request(tokenizer):
    output = Output(tokenizer, context_end=128)

    def broken(chunk):
        raise RuntimeError("the client's loop is gone")

    request = Request([1], SamplingParams(max_tokens=5), broken, tokens=[1])
    output.fail(request, "boom")
    assert request.cancelled.is_set() and request.error == "boom"
