import pytest

from lsp_server.documents import BadPosition, clean_text, index_from_utf16, looks_binary, split_at, utf16_length


def test_utf16_columns_count_astral_characters_twice():
    line = "s = '😀é' + x"
    assert utf16_length(line) == len(line) + 1
    assert index_from_utf16(line, 7) == 6           # after the emoji (two units)
    assert index_from_utf16(line, 6) == 5           # inside the surrogate pair: before the emoji
    assert index_from_utf16(line, 999) == len(line)  # past the end clamps


def test_other_position_encodings():
    line = "é😀x"
    assert index_from_utf16(line, 2, "utf-32") == 2
    assert index_from_utf16(line, 6, "utf-8") == 2


def test_split_at_a_position_after_non_ascii_text():
    text = "a = 1\nlabel = '😀' + \nz = 2\n"
    cursor = split_at(text, 1, utf16_length("label = '😀' + "))
    assert cursor.prefix == "a = 1\nlabel = '😀' + "
    assert cursor.suffix == "\nz = 2\n"
    assert cursor.line_prefix == "label = '😀' + " and cursor.line_suffix == ""
    assert cursor.character == cursor.line_end == 15


def test_split_clamps_columns_and_rejects_lines_past_the_end():
    cursor = split_at("ab\r\ncd", 0, 10)
    assert cursor.prefix == "ab" and cursor.character == 2
    assert split_at("ab\n", 1, 0).prefix == "ab\n"
    with pytest.raises(BadPosition):
        split_at("ab\n", 2, 0)
    with pytest.raises(BadPosition):
        split_at("ab", -1, 0)


def test_binary_and_lone_surrogates():
    assert looks_binary("PK\x03\x04\x00\x00")
    assert not looks_binary("def f():\n    pass\n")
    cleaned = clean_text("s = '\ud800'")
    cleaned.encode("utf-8")
    assert len(cleaned) == len("s = '\ud800'")
