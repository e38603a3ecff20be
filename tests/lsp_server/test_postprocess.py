"""Post-processing on real Python snippets: what the editor would show for a raw model output."""
from lsp_server.postprocess import (Edit, block_end, cut_at_block_end, cut_at_unmatched_closer, cut_repeated_lines,
                                    duplicates_next_line, fit_line_suffix, postprocess, repeats_what_follows,
                                    trim_trailing_whitespace, unclosed_brackets)


def test_automatic_trigger_stops_at_the_end_of_the_line():
    raw = "json.dumps(obj, indent=2)\n    return text\n"
    assert postprocess(raw, "    text = ", "", "", multiline=False) == Edit("json.dumps(obj, indent=2)")


def test_multiline_stops_where_the_block_dedents():
    line_prefix = "def load(path):"
    raw = "\n    with open(path) as f:\n        return json.load(f)\n\n\ndef save(path, data):\n    pass\n"
    edit = postprocess(raw, line_prefix, "", "", multiline=True)
    assert edit.text == "\n    with open(path) as f:\n        return json.load(f)"


def test_multiline_inside_a_body_keeps_statements_at_the_same_indent():
    raw = "total += x\n    count += 1\n    if count > 3:\n        break\nprint(total)\n"
    assert cut_at_block_end(raw, "    ") == "total += x\n    count += 1\n    if count > 3:\n        break\n"


def test_closing_bracket_at_the_opener_indent_belongs_to_the_block():
    raw = "\n    'a': 1,\n    'b': 2,\n}\nprint(table)"
    assert cut_at_block_end(raw, "table = {") == "\n    'a': 1,\n    'b': 2,\n}"


def test_block_end_waits_until_the_last_line_shows_its_indentation():
    assert block_end("x = 1\n    ", "    ") is None       # still only spaces: the indent may grow
    assert block_end("x = 1\nreturn", "    ") == 6          # a dedented word ends the block


def test_trailing_whitespace_and_blank_lines_are_trimmed():
    assert trim_trailing_whitespace("x = 1   \n    y = 2\t\n\n  \n") == "x = 1\n    y = 2"


def test_whitespace_only_output_gives_nothing():
    assert postprocess("   \n\n  ", "    x = ", "", "", multiline=True) is None
    assert postprocess("\n    return x", "    x = compute()", "", "", multiline=False) is None


def test_a_completion_that_only_repeats_what_follows_is_dropped():
    following = "    return json.dumps(obj)\n"
    assert repeats_what_follows("return json.dumps(obj)", "\n" + following)
    assert postprocess("return json.dumps(obj)", "    ", "", following, multiline=False) is None
    assert postprocess("x = 1", "    ", "", following, multiline=False) == Edit("x = 1")


def test_the_line_suffix_is_never_duplicated():
    # The model closes the call the editor already closed: insert only what is missing.
    assert fit_line_suffix("obj, indent=2)", ")") == Edit("obj, indent=2")
    assert postprocess("obj, indent=2)", "    json.dumps(", ")", "", multiline=False) == Edit("obj, indent=2")
    # The model rewrites the rest of the line around the existing text: replace it.
    assert fit_line_suffix("obj) + '\\n'", ")") == Edit("obj) + '\\n'", replaces_line_suffix=True)
    # A block that ignores the text after the cursor shrinks to its first line.
    assert fit_line_suffix("a,\n    b", "):") == Edit("a,")
    # The model only writes the existing suffix: nothing.
    assert postprocess("):", "def f(x", "):", "", multiline=False) is None


def test_multiline_stops_before_regenerating_the_next_existing_line():
    following = "    return result\n"
    raw = "result = compute(x)\n    result = clean(result)\n    return result\n"
    assert cut_repeated_lines(raw, following) == "result = compute(x)\n    result = clean(result)"


def test_no_doubled_space_after_the_cursor_space():
    assert postprocess(" compute(x)", "    y = ", "", "", multiline=False) == Edit("compute(x)")


def test_control_characters_end_the_completion():
    assert postprocess("items)\x04\x04\x04", "    f(", "", "", multiline=False) == Edit("items)")
    assert postprocess("\x00abc", "x = ", "", "", multiline=False) is None
    assert postprocess("a\tb\r\n    c", "if x:", "", "", multiline=True) == Edit("a\tb\n    c")


def test_a_closing_bracket_that_closes_nothing_ends_the_completion():
    assert postprocess("a, b))\nmore", "x = f(", "", "", multiline=False) == Edit("a, b)")
    assert postprocess("items])", "    ", "", "", multiline=False) == Edit("items")
    # brackets opened lines before still count, strings and comments do not
    prefix = "call(\n    first,  # (\n    ')',\n    "
    assert postprocess("last)", "    ", "", "", multiline=False, prefix=prefix) == Edit("last)")
    assert unclosed_brackets(prefix) == "("
    assert unclosed_brackets('x = "inside (') is None
    assert cut_at_unmatched_closer("g(1)) + 2", "(") == "g(1)) + 2"
    assert cut_at_unmatched_closer("g(1)) + 2", "") == "g(1)"


def test_never_offers_a_copy_of_the_line_below():
    # the VS Code case: typing `fo` on the line above `for line in lines:`
    assert postprocess("r line in lines:", "    fo", "", "    for line in lines:\n        pass\n", False) is None
    assert duplicates_next_line("r line in lines:", "    fo", "", "\n    for line in lines:\n")
    assert postprocess("r item in items:", "    fo", "", "    for line in lines:\n", False) == Edit("r item in items:")


def test_a_completion_that_restarts_the_statement_keeps_only_what_is_new():
    assert postprocess('return f"{name}"', "    with open(path) as f: return ", "", "", False) == Edit('f"{name}"')
    assert postprocess("returned + 1", "    return ", "", "", False) == Edit("returned + 1")
