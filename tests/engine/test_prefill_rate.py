"""A step's prompt-token budget from the prefill rate timed at start."""
from __future__ import annotations

from engine.prefill_rate import MAX_STEP_TOKENS, MIN_STEP_TOKENS, STEP_PREFILL_S, step_tokens


def test_a_step_prefills_a_quarter_seconds_worth_in_whole_steps_within_bounds():
    assert step_tokens(None) == MAX_STEP_TOKENS                 # not measured: the most
    assert step_tokens(50_000) == MAX_STEP_TOKENS                # the shipped model: whole prompts
    assert step_tokens(250) == MIN_STEP_TOKENS                   # a 0.5B model on 2 cores
    assert step_tokens(100) == MIN_STEP_TOKENS                   # slower still: never below the least
    assert step_tokens(1_000) == int(1_000 * STEP_PREFILL_S) // MIN_STEP_TOKENS * MIN_STEP_TOKENS
    assert step_tokens(1_000) == step_tokens(1_020)              # a little noise in the timing changes nothing
