"""engine/prompt.py's shared pieces: the budget, the shares of a prompt and the FIM layout."""
from __future__ import annotations

from engine.prompt import (FIM_TEXT_TEMPLATES, FILES_SHARE, MIN_PROMPT_TOKENS, SUFFIX_SHARE, files_room, fim_ids,
                           prompt_budget, suffix_room)
from engine.tokenizer import FIM_STYLES, FimTokens


def test_the_budget_leaves_room_to_generate_but_half_the_context_stays_for_the_prompt():
    assert prompt_budget(1024, 100) == 924
    assert prompt_budget(1024, 5000) == 512
    assert prompt_budget(1024, 100, max_prompt_tokens=300) == 300
    assert prompt_budget(1024, 100, max_prompt_tokens=5000) == 924   # asks for more: the context decides
    assert prompt_budget(1024, 100, max_prompt_tokens=1) == MIN_PROMPT_TOKENS
    assert prompt_budget(2, 100) == MIN_PROMPT_TOKENS


def test_the_shares_of_a_prompt():
    assert files_room(300) == 300 // FILES_SHARE
    assert suffix_room(10, 50, 100) == 50                      # a short prefix leaves the suffix all it needs
    assert suffix_room(10, 500, 100) == 90                     # ... and no more than the room it leaves
    assert suffix_room(1000, 500, 100) == 100 // SUFFIX_SHARE  # a long prefix: the suffix gets its share


def test_fim_layouts_psm_and_spm():
    fim = FimTokens("starcoder", 1, 2, 3)
    assert fim_ids(fim, [10, 11], [20]) == [1, 10, 11, 2, 20, 3]
    assert fim_ids(fim, [10, 11], [20], spm=True) == [1, 2, 20, 3, 10, 11]


def test_the_text_layouts_are_the_token_layouts_written_out():
    for style, (prefix, suffix, middle) in FIM_STYLES.items():
        if style != "codellama":
            assert FIM_TEXT_TEMPLATES[style] == f"{prefix}{{prefix}}{suffix}{{suffix}}{middle}"
    assert FIM_TEXT_TEMPLATES["codellama"].format(prefix="a", suffix="b") == "<PRE> a <SUF>b <MID>"
