"""What the editor sends the engine, on real Python source (json/encoder.py): bounded text whose
start stays put while the user types, and neighbour snippets."""
import json
from pathlib import Path

from lsp_server.context import (CHARS_PER_TOKEN, MIN_CHARS, PREFIX_STRIDE_LINES, build_prompt, keep_first_lines,
                                keep_last_lines, select_neighbours, snippet_query)

SOURCE = Path(json.__file__).with_name("encoder.py").read_text()


def test_prefix_and_suffix_are_bounded_by_the_budget_in_characters():
    cut = SOURCE.index("def encode(self, o):")
    prefix, suffix = SOURCE[:cut], SOURCE[cut:]
    budget = 2 * MIN_CHARS // CHARS_PER_TOKEN
    prompt = build_prompt(prefix * 3, suffix * 3, budget_tokens=budget, path="json/encoder.py")
    assert (prefix * 3).endswith(prompt.prefix) and (suffix * 3).startswith(prompt.suffix)
    assert 0 < len(prompt.prefix) <= budget * CHARS_PER_TOKEN and 0 < len(prompt.suffix) <= budget * CHARS_PER_TOKEN // 2
    assert prompt.suffix.endswith("\n") and prompt.path == "json/encoder.py"
    small = build_prompt(prefix * 3, suffix * 3, budget_tokens=10)  # never less than MIN_CHARS: the cache model's share
    assert MIN_CHARS - 1000 <= len(small.prefix) <= MIN_CHARS  # whole lines, on an 8-line stride
    whole = build_prompt(prefix, suffix, budget_tokens=10_000)
    assert (whole.prefix, whole.suffix) == (prefix, suffix)


def test_prefix_start_moves_in_steps_so_typing_keeps_the_same_first_lines():
    cut = SOURCE.index("        if self.check_circular:")
    starts = set()
    for typed in range(1, 30):  # the user types a line character by character
        prefix = SOURCE[:cut] + "        result = compute(value)"[:typed]
        kept = keep_last_lines(prefix, 2000)
        starts.add(prefix.count("\n") - kept.count("\n"))
    assert len(starts) == 1 and starts.pop() % PREFIX_STRIDE_LINES == 0


def test_a_single_huge_line_is_cut_by_characters():
    line = "x = [" + ", ".join(str(i) for i in range(5000))
    assert line.endswith(keep_last_lines(line, 500)) and len(keep_last_lines(line, 500)) == 500
    assert line.startswith(keep_first_lines(line, 500)) and len(keep_first_lines(line, 500)) == 500


def test_neighbours_pick_the_most_similar_window():
    helpers = ("import os\n\n" + "def unrelated_%d():\n    return os.getcwd()\n\n" * 1 +
               "def very_specific_name_42(payload, retries):\n    return send(payload, retries)\n")
    other = "class Colour:\n    RED = 1\n    GREEN = 2\n"
    query = snippet_query("def run(payload, retries):\n    payload = prepare(payload)\n    return ")
    chosen = select_neighbours(query, [("other.py", other), ("helpers.py", helpers)], max_files=4)
    assert [s.path for s in chosen] == ["helpers.py"]  # no shared identifier with other.py
    assert "very_specific_name_42" in chosen[0].text
    assert select_neighbours(query, [("helpers.py", helpers)], max_files=0) == []


def test_the_query_ignores_the_word_being_typed():
    assert snippet_query("alpha = beta\ngamma = delta.eps") == {"alpha", "beta", "gamma", "delta"}


def test_a_file_the_code_names_is_a_neighbour():
    helpers = "def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n"
    query = snippet_query("import helpers\n\nvalue = helpers.very_spec")
    chosen = select_neighbours(query, [("pkg/helpers.py", helpers), ("other.py", "class Colour:\n    RED = 1\n")], 4)
    assert [s.path for s in chosen] == ["pkg/helpers.py"]
