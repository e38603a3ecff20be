"""engine/prompt.py's shared pieces: the budget, the shares of a prompt and the FIM layout."""
from __future__ import annotations

from engine.prompt import (CUT_SHARE, FIM_TEXT_TEMPLATES, FILES_SHARE, FIRST_CHUNK_S, MIN_PROMPT_TOKENS,
                           MIN_SUFFIX_TOKENS, SUFFIX_PREFILL_S, SUFFIX_SHARE, files_room, fim_ids, prompt_budget,
                           suffix_budget, suffix_room)
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


def test_the_suffix_budget_follows_the_prefill_rate_where_the_whole_window_is_not_interactive():
    assert suffix_budget(None, 1500) == 0                      # not measured: no limit
    assert suffix_budget(1500 / FIRST_CHUNK_S, 1500) == 0      # the whole window prefills in time: no limit
    assert suffix_budget(2000, 1500) == int(2000 * SUFFIX_PREFILL_S) // MIN_SUFFIX_TOKENS * MIN_SUFFIX_TOKENS
    assert suffix_budget(300, 1500) == suffix_budget(200, 1500)  # a little noise in the timing changes nothing
    assert suffix_budget(100, 1500) == MIN_SUFFIX_TOKENS       # a slow machine still sees the next lines


def shipped_builder(context_tokens: int, suffix_tokens: int = 0):
    from engine.model_dir import default_model_dir, load_tokenizer_from_dir
    from engine.prompt import PromptBuilder

    return PromptBuilder(load_tokenizer_from_dir(default_model_dir()), 32768, context_tokens, suffix_tokens)


def engine_source() -> str:
    """A long text to type through: the engine's own modules."""
    from pathlib import Path

    return "".join(p.read_text() for p in sorted(Path(__file__).parents[2].joinpath("engine").glob("*.py")))


def split_fim(builder, ids: list[int]) -> tuple[list[int], list[int]]:
    fim = builder.tokenizer.fim
    return ids[ids.index(fim.prefix) + 1:ids.index(fim.suffix)], ids[ids.index(fim.suffix) + 1:ids.index(fim.middle)]


def test_a_suffix_budget_keeps_the_nearest_whole_lines():
    text = engine_source()
    prefix, suffix = text[14_000:28_000], text[28_000:29_000]
    limited, whole = shipped_builder(1500, suffix_tokens=40), shipped_builder(1500)
    pre, suf = split_fim(limited, limited.build(prefix, suffix, 32))
    whole_pre, whole_suf = split_fim(whole, whole.build(prefix, suffix, 32))
    kept = limited.tokenizer.decode(suf)
    assert 0 < len(suf) <= 40 < len(whole_suf)
    # The prefix may use the room the suffix leaves (its cut still falls on a chosen line).
    assert suffix.startswith(kept) and kept.endswith("\n") and len(pre) >= len(whole_pre)
    one_line = "x = [" + ", ".join(str(i) for i in range(200)) + "]\n"  # a first line longer than the budget
    assert len(split_fim(limited, limited.build(prefix, one_line, 32))[1]) == 40


def test_without_a_suffix_budget_the_suffix_gets_its_room_as_before():
    text = engine_source()
    builder = shipped_builder(256)
    pre, suf = split_fim(builder, builder.build(text[:3000], text[3000:4000], 32))
    room = builder.budget(32) - len(builder.tokenizer.bos_ids) - 3
    assert builder.suffix_tokens == 0 and len(suf) == room // SUFFIX_SHARE and len(pre) + len(suf) <= room


def test_typing_through_a_file_in_a_large_window_recomputes_little_and_moves_the_cut_rarely():
    # An editor sends 8,000 characters before the cursor and 1,000 after it, and types ~15
    # characters between requests; the context holds 1,500 tokens, the suffix at most 32.
    builder = shipped_builder(1500, suffix_tokens=32)
    assert builder.stride == 1500 // CUT_SHARE
    text, step = engine_source(), 15
    prompts = [builder.build(text[cursor - 8000:cursor], text[cursor:cursor + 1000], 32)
               for cursor in range(40_000, 40_000 + 400 * step, step)]
    recomputed, moves = [], 0
    for old, new in zip(prompts, prompts[1:]):
        common = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        if common < len(new) // 2:
            moves += 1  # the cut moved on: the whole prompt is new
        else:
            recomputed.append(len(new) - common)
    typed = len(builder.tokenizer.encode(text[40_000:40_000 + 400 * step]))
    # The tail after the last shared token: what was typed, the suffix and the FIM tokens.
    assert max(recomputed) <= 32 + 3 + 40, sorted(recomputed)[-5:]
    # About one move in `stride` typed tokens (a little more where no line chosen one in
    # `cut_every` is in reach); were the first line start in reach taken then, it would move at
    # every line typed there (~1 in 40 typed tokens in these stretches).
    assert moves <= 2 * typed // builder.stride, (moves, typed)


def test_the_engine_limits_the_suffix_where_its_window_would_not_prefill_in_time(make_engine):
    assert make_engine().prompts.suffix_tokens == 0  # the tiny model prefills its whole window in a blink
    engine = make_engine(suffix_tokens=8)
    suffix = "".join(f"y{i} = {i}\n" for i in range(30))
    ids = engine.build_prompt("def f(x):\n    return x\n", suffix, 16)
    fim = engine.tokenizer.fim
    kept = ids[ids.index(fim.suffix) + 1:ids.index(fim.middle)]
    assert engine.prompts.suffix_tokens == 8 and 0 < len(kept) <= 8 and suffix.startswith(engine.tokenizer.decode(kept))
