"""SamplingParams validation and the token choice."""
from __future__ import annotations

import math

import pytest
import torch

from engine import SamplingError, SamplingParams
from engine.sampling import choose_tokens, sample_token


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 0}, {"max_tokens": -3}, {"max_tokens": 2.5}, {"max_tokens": True}, {"max_tokens": "10"},
    {"temperature": -0.1}, {"temperature": 9}, {"temperature": math.nan}, {"temperature": "hot"},
    {"top_k": 0}, {"top_k": 1.5}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": math.inf},
    {"stop": [""]}, {"stop": [3]}, {"stop": 5}, {"stop": ["x"] * 17}, {"stop": ["y" * 1000]},
    {"seed": -1}, {"seed": "abc"}, {"seed": 1.5},
])
def test_invalid_params_raise_a_clear_error(kwargs):
    with pytest.raises(SamplingError) as err:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(err.value)


def test_valid_params():
    p = SamplingParams(max_tokens=5, temperature=0.7, top_k=10, top_p=0.95, stop="\n", seed=3)
    assert p.stop == ["\n"] and not p.greedy
    assert SamplingParams(stop=None).stop == [] and SamplingParams().greedy


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([5.0, 4.0, 3.0, -10.0, -10.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample_token(logits, SamplingParams(temperature=1.0, top_k=2), g) for _ in range(200)}
    assert picks <= {0, 1} and len(picks) == 2
    picks = {sample_token(logits, SamplingParams(temperature=1.0, top_p=0.5), g) for _ in range(50)}
    assert picks == {0}


def test_choose_tokens_mixes_greedy_and_sampled_rows():
    logits = torch.tensor([[0.0, 9.0, 1.0], [7.0, 0.0, 0.0], [0.0, 0.0, 20.0]])
    params = [SamplingParams(), SamplingParams(), SamplingParams(temperature=0.5, seed=1)]
    gens = [None, None, torch.Generator().manual_seed(1)]
    assert choose_tokens(logits, params, gens) == [1, 0, 2]


@pytest.mark.parametrize("field, value", [("temperature", 1e-300), ("temperature", 5e-324), ("top_p", 1e-45),
                                          ("top_p", 1e-300)])
def test_values_float32_sampling_cannot_compute_are_rejected_naming_the_field(field, value):
    with pytest.raises(SamplingError) as err:
        SamplingParams(**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_extreme_allowed_values_sample_without_nan():
    from engine.sampling_params import SMALLEST_POSITIVE

    logits = torch.tensor([3.0, 2.9, -50.0, 80.0, 79.9])
    g = torch.Generator().manual_seed(0)
    for params in (SamplingParams(temperature=SMALLEST_POSITIVE), SamplingParams(temperature=0.7, top_p=SMALLEST_POSITIVE),
                   SamplingParams(temperature=SMALLEST_POSITIVE, top_k=2, top_p=SMALLEST_POSITIVE)):
        assert sample_token(logits, params, g) == 3
    big = torch.tensor([1e38, -1e38, 3e38])
    assert sample_token(big, SamplingParams(temperature=2.0), g) in (0, 2)
