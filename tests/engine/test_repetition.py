"""Loops: the guard on strings, and the shipped default model on the prompts of issue 16."""
import pytest

from engine import Engine, SamplingParams
from engine.repetition import RepetitionGuard, has_loop

FIB = "def fibonacci(n):\n    if n <= 1:\n        return n\n    return "
STACK = ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
         "        self.items.append(item)\n\n    def pop(self): return self.")
OPEN = "def read(path):\n    with open(path) as f: return "
# The VS Code case: the empty line of a function, multi-line on.
TOTAL = ("def total(values):\n    total = 0\n    for value in values:\n        total += value\n"
         "        print(value)\n    ")
PROMPTS = {"fibonacci": FIB, "stack": STACK, "open": OPEN, "vscode": TOTAL}


def guard_cut(prompt: str, text: str, suffix: str | None = None) -> str:
    """What the engine sends of `text` generated after `prompt`, fed one character at a time."""
    guard = RepetitionGuard.for_prompt(prompt, suffix)
    for end in range(1, len(text) + 1):
        cut, _ = guard.check(text[:end])
        if cut is not None:
            return text[:cut]
    cut, _ = guard.check(text, finished=True)
    return text if cut is None else text[:cut]


def test_the_guard_cuts_a_repeated_line_a_repeated_block_and_a_repeated_word():
    assert guard_cut(FIB, "n\n    return n\n    return n\n    return n") == "n"
    assert guard_cut("x = [\n", "    a,\n    b,\n    a,\n    b,\n    a,\n") == "    a,\n    b,"
    assert guard_cut(OPEN, "f: return f: return f: return f: return f") == "f"   # the user typed the first copy
    assert guard_cut("x = ", "file file file file file") == "file"
    assert guard_cut("def f():\n    ", "x = 1\n    return x\n") == "x = 1\n    return x\n"   # nothing repeats


def test_the_guard_stops_before_the_next_line_of_the_document():
    assert guard_cut("for x in xs:\n    ", "y = x\n    print(x)\n", suffix="\n    print(x)\n") == "y = x"
    # a line that only begins like it goes on
    assert guard_cut("for x in xs:\n    ", "y = x\n    print(y)\n", suffix="\n    print(x)\n") == "y = x\n    print(y)\n"


def test_text_that_may_begin_a_repeat_is_held_back_until_it_is_decided():
    guard = RepetitionGuard.for_prompt("def f():\n    return a\n", None)
    assert guard.check("    return")[1] == 0              # so far a copy of the line above
    assert guard.check("    return b")[1] == len("    return b")


def test_has_loop_counts_repeats_not_ordinary_code():
    assert has_loop("n\n    return n\n    return n", "    return ")
    assert has_loop("a()\nb()\na()\nb()\n")
    assert has_loop("file file file file file")
    assert not has_loop("if x:\n    return 1\nif y:\n    return 1\n")   # a line may recur, not a run
    assert not has_loop("x = [0, 0, 0, 0]")
    assert has_loop("0.0.0 0 0 0 0 0 0 0 0 0 0 0 0 0")


@pytest.fixture(scope="module")
def default_engine():
    engine = Engine.load()
    yield engine
    engine.close()


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_the_default_model_does_not_loop_on_the_prompts_of_issue_16(default_engine, name):
    prompt = PROMPTS[name]
    text = default_engine.complete(prompt, params=SamplingParams(max_tokens=64)).text
    context = prompt[prompt.rfind("\n", 0, len(prompt) - 1) + 1:]
    lines = [line.strip() for line in (context + text).split("\n") if line.strip()]
    assert not has_loop(text, context), text
    assert all(a != b for a, b in zip(lines, lines[1:])), text


def test_penalties_are_applied_as_openai_defines_them(default_engine):
    plain = default_engine.complete(OPEN, params=SamplingParams(max_tokens=24, stop_loops=False, cache_weight=0.0))
    penalised = default_engine.complete(OPEN, params=SamplingParams(max_tokens=24, stop_loops=False, cache_weight=0.0,
                                                                    frequency_penalty=2.0, presence_penalty=2.0))
    assert has_loop(plain.text) or plain.text != penalised.text
    tokens = default_engine.tokenizer.encode(penalised.text)
    assert max(tokens.count(t) for t in set(tokens)) <= max(2, len(tokens) // 4)
