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


def typed_windows(text: str, before: int, step: int, count: int, start: int) -> list[str]:
    """What an editor sends as it types on through `text`: the `before` characters behind the cursor."""
    return [text[max(0, cursor - before):cursor] for cursor in range(start, start + step * count, step)]


def test_a_sliding_window_is_cut_at_the_same_line_keystroke_after_keystroke():
    from pathlib import Path

    from engine.model_dir import default_model_dir, load_tokenizer_from_dir
    from engine.prompt import PromptBuilder

    tokenizer = load_tokenizer_from_dir(default_model_dir())
    builder = PromptBuilder(tokenizer, 256)
    text = Path(__file__).parents[2].joinpath("engine", "scheduler.py").read_text()
    windows = typed_windows(text, 4000, 15, 40, 6000)
    prompts = [builder.build(w, "\n\ndef after():\n    pass\n", 32) for w in windows]
    assert all(len(ids) <= builder.budget(32) for ids in prompts)
    fim = tokenizer.fim
    for window, ids in zip(windows, prompts):  # the kept prefix opens a line (after its indentation, maybe)
        kept = tokenizer.decode(ids[ids.index(fim.prefix) + 1:ids.index(fim.suffix)])
        assert window.endswith(kept) and len(kept) < len(window)
        assert window[:-len(kept)].rstrip(" \t").endswith("\n")
    shared = []
    for old, new in zip(prompts, prompts[1:]):
        common = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        shared.append(common)
    # Each keystroke types ~4 tokens; the cut moves on only when the rest outgrows the budget.
    assert sum(common >= 64 for common in shared) >= 0.75 * len(shared), shared


def test_a_prefix_that_fits_is_kept_whole_and_one_without_line_breaks_is_cut_on_the_stride():
    from engine.model_dir import default_model_dir, load_tokenizer_from_dir
    from engine.prompt import PromptBuilder

    builder = PromptBuilder(load_tokenizer_from_dir(default_model_dir()), 256)
    assert builder.cut(list(range(100)), 100) == 0
    no_breaks = [builder.tokenizer.encode("x")[0]] * 500
    assert builder.cut(no_breaks, 200) % builder.stride == 0
