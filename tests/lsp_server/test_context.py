"""Prompt budgeting and neighbour snippets on real Python source (json/encoder.py), real tokenizer."""
import json
from pathlib import Path

import pytest

from engine.tokenizer import load_tokenizer
from lsp_server.context import (PREFIX_STRIDE_LINES, Snippet, build_prompt, estimate_tokens, keep_first_lines,
                                keep_last_lines, render_snippets, select_neighbours, snippet_query)

SOURCE = Path(json.__file__).with_name("encoder.py").read_text()


@pytest.fixture(scope="module")
def count(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.tiktoken")
    return lambda text: len(tokenizer.encode(text))


def test_budget_keeps_the_nearest_lines_of_both_sides(count):
    cut = SOURCE.index("def encode(self, o):")
    prefix, suffix = SOURCE[:cut], SOURCE[cut:]
    prompt = build_prompt(prefix, suffix, count, budget=200, suffix_fraction=0.25)
    assert prefix.endswith(prompt.prefix) and suffix.startswith(prompt.suffix)
    assert count(prompt.prefix) + count(prompt.suffix) <= 200
    assert count(prompt.suffix) > 30        # at least nearly its share (whole lines only)
    assert count(prompt.prefix) > 100       # the prefix gets the rest; lines its stride drops go to the suffix


def test_unused_suffix_share_goes_to_the_prefix_and_back(count):
    short_suffix = build_prompt(SOURCE, "\n", count, budget=300, suffix_fraction=0.5)
    assert count(short_suffix.prefix) > 200
    short_prefix = build_prompt("import json\n", SOURCE, count, budget=300, suffix_fraction=0.25)
    assert count(short_prefix.suffix) > 200


def test_split_is_configurable(count):
    lines = SOURCE[:4000], SOURCE[4000:]
    small = build_prompt(*lines, count, budget=300, suffix_fraction=0.1)
    large = build_prompt(*lines, count, budget=300, suffix_fraction=0.6)
    assert count(small.suffix) < count(large.suffix) and count(small.prefix) > count(large.prefix)


def test_prefix_start_moves_in_steps_so_typing_keeps_the_same_first_tokens(count):
    cut = SOURCE.index("        if self.check_circular:")
    starts = set()
    for typed in range(1, 30):  # the user types a line character by character
        prefix = SOURCE[:cut] + "        result = compute(value)"[:typed]
        kept = keep_last_lines(prefix, count, 300)
        starts.add(prefix.count("\n") - kept.count("\n"))
    assert len(starts) == 1 and starts.pop() % PREFIX_STRIDE_LINES == 0


def test_a_single_huge_line_is_cut_by_characters(count):
    line = "x = [" + ", ".join(str(i) for i in range(5000))
    assert 0 < count(keep_last_lines(line, count, 50)) <= 50
    assert line.endswith(keep_last_lines(line, count, 50))
    assert 0 < count(keep_first_lines(line, count, 50)) <= 50
    assert keep_first_lines(SOURCE, count, 0) == ""


def test_estimate_is_close_to_the_real_tokenizer_on_code(count):
    assert 0.5 < estimate_tokens(SOURCE) / count(SOURCE) < 2.0


def test_neighbours_pick_the_most_similar_window_within_budget(count):
    helpers = ("import os\n\n" + "def unrelated_%d():\n    return os.getcwd()\n\n" * 1 +
               "def very_specific_name_42(payload, retries):\n    return send(payload, retries)\n")
    other = "class Colour:\n    RED = 1\n    GREEN = 2\n"
    query = snippet_query("def run(payload, retries):\n    payload = prepare(payload)\n    return ")
    chosen = select_neighbours(query, [("other.py", other), ("helpers.py", helpers)], count, budget=64,
                               max_files=4)
    assert [s.path for s in chosen] == ["helpers.py"]  # no shared identifier with other.py
    assert "very_specific_name_42" in chosen[0].text
    assert sum(count(s.text) for s in chosen) <= 64
    assert select_neighbours(query, [("helpers.py", helpers)], count, budget=64, max_files=0) == []


def test_snippets_go_first_as_comments_and_the_budget_still_holds(count):
    snippet = Snippet("pkg/helpers.py", "def very_specific_name_42(payload):\n    return payload\n", 0.5)
    prompt = build_prompt(SOURCE[:3000], SOURCE[3000:], count, budget=200, snippets=[snippet])
    header = render_snippets([snippet], "#")
    assert prompt.prefix.startswith("# Compare this snippet from pkg/helpers.py:\n# def very_specific_name_42(")
    assert prompt.prefix.startswith(header)
    assert count(prompt.prefix) + count(prompt.suffix) <= 200 + 2
    assert render_snippets([snippet], "//").startswith("// Compare")


def test_the_query_ignores_the_word_being_typed():
    assert snippet_query("alpha = beta\ngamma = delta.eps") == {"alpha", "beta", "gamma", "delta"}


def test_a_file_the_code_names_is_a_neighbour(count):
    helpers = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n"
    query = snippet_query("import helpers\n\nvalue = helpers.very_spec")
    chosen = select_neighbours(query, [("pkg/helpers.py", helpers), ("other.py", "class Colour:\n    RED = 1\n")], count, 64, 4)
    assert [s.path for s in chosen] == ["pkg/helpers.py"]


def test_the_rest_of_the_file_goes_to_the_cache_model_not_the_prompt(count):
    cut = SOURCE.index("        if self.check_circular:")
    prefix, suffix = SOURCE[:cut] + "        result = comp", "ute(x)\n" + SOURCE[cut:]
    prompt = build_prompt(prefix, suffix, count, budget=200)
    assert prefix.endswith(prompt.far_before + prompt.prefix) and 0 < len(prompt.far_before) <= 6_000
    assert prompt.far_after == SOURCE[cut:cut + 6_000]  # from the line after the cursor's, whatever the budget
    typed = build_prompt(prefix + "ed", suffix, count, budget=200)
    assert typed.far_before == prompt.far_before and typed.far_after == prompt.far_after
