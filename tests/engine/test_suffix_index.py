"""The token suffix array: longest matches against a brute-force search, exclusion, the file format."""
import random

import numpy as np
import pytest

from engine.suffix_index import MAX_MATCH, IndexFormatError, SuffixIndex


def brute_force(documents, history, exclude=()):
    """(length, {next token: count}) of the longest tail of history followed by a token somewhere."""
    best = (0, {})
    for length in range(1, min(len(history), MAX_MATCH) + 1):
        tail, following = history[-length:], {}
        for d, doc in enumerate(documents):
            if d in exclude:
                continue
            for i in range(len(doc) - length):
                if doc[i:i + length] == tail:
                    following[doc[i + length]] = following.get(doc[i + length], 0) + 1
        if not following:
            break
        best = (length, following)
    return best


def test_longest_match_equals_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        documents = [[rng.randrange(4) for _ in range(rng.randrange(0, 40))] for _ in range(rng.randrange(1, 4))]
        index = SuffixIndex.build(documents)
        history = [rng.randrange(4) for _ in range(rng.randrange(1, 14))]
        exclude = frozenset({0}) if len(documents) > 1 and rng.random() < 0.4 else frozenset()
        length, following = brute_force(documents, history, exclude)
        match = index.longest_match(history, exclude)
        assert match.length == length, (documents, history)
        assert dict(zip(match.ids.tolist(), match.counts.tolist())) == following
        if length:   # the bound a generation step passes (the match one token earlier) gives the same answer
            assert index.longest_match(history, exclude, previous=length - 1).length == length


def test_matches_never_span_two_documents_and_end_inside_one():
    index = SuffixIndex.build([[1, 2, 3], [4, 5]], ["a.py", "b.py"])
    assert index.longest_match([3, 4]).length == 1    # "3 4" only exists across the boundary: "4" matches
    assert index.longest_match([2, 3]).length == 0    # "2 3" ends its document: nothing follows
    match = index.longest_match([9, 1, 2])
    assert match.length == 2 and match.ids.tolist() == [3]
    assert index.following(int(match.ends[0]), 10) == [3]     # a draft stops at the document's end
    assert index.documents_holding([4, 5]) == {1}


def test_long_repeats_match_up_to_max_match():
    block = list(range(100))
    index = SuffixIndex.build([block + block])
    match = index.longest_match(block)
    assert match.length == MAX_MATCH and match.ids.tolist() == [0]
    assert index.following(int(match.ends[0]), 5) == [0, 1, 2, 3, 4]
    assert match.draft(3) == [0, 1, 2]          # what a speculative decoder proposes


def test_frequent_matches_are_sampled_but_counted():
    index = SuffixIndex.build([[7, 8] * 5000 + [7, 9]])
    match = index.longest_match([1, 7])
    assert match.length == 1 and match.occurrences >= 4000
    assert match.ids[np.argmax(match.counts)] == 8


def test_save_and_load_round_trip(tmp_path):
    index = SuffixIndex.build([[1, 2, 3, 4], [2, 3, 5]], ["x.py", "y.py"])
    path = tmp_path / "ws.safetensors"
    index.save(path, "tok-1", {"note": "n"})
    loaded, header = SuffixIndex.load(path, "tok-1")
    assert loaded.names == ["x.py", "y.py"] and header["note"] == "n"
    assert loaded.longest_match([2, 3]).counts.tolist() == index.longest_match([2, 3]).counts.tolist()
    with pytest.raises(IndexFormatError, match="another tokenizer"):
        SuffixIndex.load(path, "tok-2")
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(IndexFormatError):
        SuffixIndex.load(tmp_path / "junk")
