"""SamplingParams checks every value against its one table of bounds, and needs no torch to do so."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.sampling_params import (GREEDY, MAX_STOP_STRINGS, SAMPLING_BOUNDS, SMALLEST_POSITIVE, SamplingError,
                                    SamplingParams)


def outside(bound):
    """Values just outside a bound, on each side it has."""
    step = 1 if bound.integer else (bound.low / 2 if bound.low == SMALLEST_POSITIVE else 0.01)
    return [v for v in (None if bound.low is None else bound.low - step,
                        None if bound.high is None else bound.high + (1 if bound.integer else 0.01)) if v is not None]


@pytest.mark.parametrize("name", sorted(SAMPLING_BOUNDS))
def test_each_field_takes_its_bounds_and_nothing_beyond_them(name):
    bound = SAMPLING_BOUNDS[name]
    for value in (bound.low, bound.high):
        if value is not None:
            assert getattr(SamplingParams(**{name: value}), name) == value
    for value in outside(bound) + ["1", True, float("nan")]:
        if name == "temperature" and value == GREEDY:
            continue
        with pytest.raises(SamplingError) as err:
            SamplingParams(**{name: value})
        assert err.value.field == name and name in str(err.value)


def test_greedy_is_the_one_temperature_below_the_range():
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=GREEDY).greedy
    assert not SamplingParams(temperature=SMALLEST_POSITIVE).greedy


def test_optional_fields_take_none_and_stops_are_bounded():
    assert SamplingParams(top_k=None, seed=None, cache_weight=None).top_k is None
    assert SamplingParams(stop="\n").stop == ["\n"]
    with pytest.raises(SamplingError):
        SamplingParams(stop=["x"] * (MAX_STOP_STRINGS + 1))


def test_the_smallest_positive_value_is_float32s_smallest_normal_number():
    torch = pytest.importorskip("torch")
    assert SMALLEST_POSITIVE == float(torch.finfo(torch.float32).tiny)


def test_what_front_ends_import_loads_no_torch():
    # The language server talking to a remote server imports these; torch would cost it ~1 s and 300 MB.
    code = ("import sys, engine, engine.inputs, engine.prompt, engine.sampling_params; "
            "from engine import CompletionInput, ContextFile, SamplingParams; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_integer_too_large_for_a_float_is_out_of_range_not_an_overflow():
    with pytest.raises(SamplingError) as err:
        SamplingParams(temperature=10**400)
    assert err.value.field == "temperature"
