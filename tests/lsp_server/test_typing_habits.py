"""The completion cache (typed-ahead reuse), prefetch targets, adaptive debounce and the recent-chunks
ring, on plain strings (exclusions: tests/project_files)."""
from __future__ import annotations

from lsp_server.completer import Suggestion, should_complete
from lsp_server.completion_cache import Cached, CompletionCache, key_of
from lsp_server.debounce import AdaptiveDebounce, DebounceLimits
from lsp_server.documents import split_at
from lsp_server.postprocess import Edit
from lsp_server.prefetch import after_accepting
from lsp_server.recent_chunks import CHUNK_LINES, RecentChunks
from lsp_server.settings import Settings

TEXT = "def mean(values):\n    total = \n    return total\n"


def at_end_of(text: str, line: int):
    return split_at(text, line, len(text.split("\n")[line]))


def test_typing_the_first_characters_of_a_suggestion_gets_the_rest_from_the_cache():
    cache = CompletionCache()
    cursor = at_end_of(TEXT, 1)
    cache.put(key_of(cursor, False), Cached("id-1", Edit("sum(values)"), False))
    typed = TEXT.replace("total = ", "total = sum(")
    hit = cache.lookup(at_end_of(typed, 1), False)
    assert hit is not None and (hit.id, hit.edit.text) == ("id-1", "values)")
    # Something else typed, or another mode: no reuse.
    assert cache.lookup(at_end_of(TEXT.replace("total = ", "total = max("), 1), False) is None
    assert cache.lookup(at_end_of(typed, 1), True) is None
    # Typed all of it: nothing left to show.
    assert cache.lookup(at_end_of(TEXT.replace("total = ", "total = sum(values)"), 1), False) is None
    # Back where it was made (Backspace): the whole suggestion again.
    assert cache.lookup(cursor, False).edit.text == "sum(values)"


def test_the_cache_keeps_the_most_recent_entries():
    cache = CompletionCache(max_entries=2)
    for i in range(3):
        cache.put(f"k{i}", Cached(str(i), Edit("x"), False))
    assert (cache.get("k0"), cache.get("k2").id, len(cache)) == (None, "2", 2)


def test_after_a_one_line_accept_the_next_suggestion_is_prepared_on_the_next_line():
    cursor = at_end_of(TEXT, 1)
    following = after_accepting(cursor, Suggestion("id", Edit("sum(values)"), False))
    assert following.prefix.endswith("    total = sum(values)\n    ") and following.suffix == "\n    return total\n"
    opener = at_end_of("def f():\n    for x in y\n", 1)
    assert after_accepting(opener, Suggestion("id", Edit(":"), False)).line_prefix == "        "
    block = after_accepting(cursor, Suggestion("id", Edit("0\n    count = 0"), True))
    assert block.prefix.endswith("count = 0") and block.line_suffix == ""
    # Code left after the suggestion on its line: where the user goes next is anyone's guess.
    middle = split_at("x = f(a, b)\n", 0, len("x = f(a"))
    assert after_accepting(middle, Suggestion("id", Edit(", c"), False)) is None


def test_no_automatic_trigger_mid_word_or_before_more_than_a_few_characters():
    settings = Settings()
    assert should_complete(split_at("x = foo(", 0, 8), settings, invoked=False)
    assert should_complete(split_at('x = f("")', 0, 7), settings, invoked=False)
    assert not should_complete(split_at("x = value", 0, 6), settings, invoked=False)        # mid-word
    assert not should_complete(split_at("x = f(a)   # note", 0, 6), settings, invoked=False)  # code follows
    assert not should_complete(split_at("x = f()))))))", 0, 6), settings, invoked=False)    # many closers
    assert should_complete(split_at("x = value", 0, 6), settings, invoked=True)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_debounce_follows_the_typing_speed_and_the_latency_within_tabbys_bounds():
    clock = Clock()
    debounce = AdaptiveDebounce(DebounceLimits(), clock)
    end_of_line = at_end_of("x = foo(\n", 0)
    mid_line = split_at("x = foo bar\n", 0, 7)
    assert debounce.delay_ms(end_of_line) == 1.5 * 200  # default gap until enough keystrokes
    for _ in range(30):
        clock.now += 0.080  # a fast typist: 80 ms between keys
        debounce.keystroke()
    assert abs(debounce.typing_gap_ms() - 80) < 1e-6
    assert debounce.delay_ms(end_of_line) == 120
    assert debounce.delay_ms(mid_line) > debounce.delay_ms(end_of_line)
    clock.now += 5  # a pause is not typing speed
    debounce.keystroke()
    assert abs(debounce.typing_gap_ms() - 80) < 1e-6
    debounce.measured(500)  # a slow backend: start sooner, never below the floor
    assert debounce.delay_ms(end_of_line) == 100
    for _ in range(60):
        clock.now += 0.390
        debounce.keystroke()
    debounce.latency_ms = 0
    assert debounce.delay_ms(mid_line) == 1000  # a slow typist mid-line: 3 x 390 ms, capped


def test_the_ring_keeps_recent_distinct_chunks_and_skips_the_cursors_surroundings():
    ring = RecentChunks(capacity=2)
    text = "".join(f"line_{i} = {i}\n" for i in range(300))
    ring.touch("file:///a.py", "a.py", text, 10)
    ring.touch("file:///a.py", "a.py", text, 12)  # the same place: one chunk
    assert ring.flush() == 1 and len(ring.ring) == 1
    ring.touch("file:///a.py", "a.py", text, 200)
    ring.touch("file:///b.py", "b.py", "def helper():\n    return 42\n", 0)
    ring.flush()
    assert [c.path for c in ring.ring] == ["a.py", "b.py"]  # the oldest went
    documents = ring.documents("file:///a.py", cursor_line=200)
    assert [label for label, _ in documents] == ["b.py (lines 1-2)"]
    assert len(ring.documents("file:///c.py", 0)[1][1].splitlines()) == CHUNK_LINES


def test_the_ring_gives_and_keeps_nothing_of_a_document_that_becomes_excluded():
    ring = RecentChunks()
    text = "".join(f"line_{i} = {i}\n" for i in range(100))
    ring.touch("file:///p/a.py", "a.py", text, 10)
    ring.touch("file:///p/.env", ".env", "TOKEN = 'x'\n", 0)
    ring.flush()
    ring.touch("file:///p/.env", ".env", "TOKEN = 'y'\n", 0)           # queued, not yet in the ring
    excluded = lambda uri: uri.endswith(".env")  # noqa: E731
    assert [label for label, _ in ring.documents("file:///p/b.py", 0, allowed=lambda u: not excluded(u))] == [
        "a.py (lines 1-64)"]
    ring.forget_where(excluded)
    ring.flush()
    assert [chunk.uri for chunk in ring.ring] == ["file:///p/a.py"]
