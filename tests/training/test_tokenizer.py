"""The code BPE: trained by us, loaded by tiktoken offline, exact on any text."""
import pytest
import tiktoken
from hypothesis import given, settings, strategies as st

from engine.model_dir import load_tokenizer_from_dir
from engine.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, load_tokenizer, read_ranks
from training.tokenizer import save_tokenizer, train_bpe

from ..conftest import STDLIB


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [p.read_text(encoding="utf-8") for p in sorted((STDLIB / "json").glob("*.py"))]
    ranks = train_bpe(texts, 600, show_progress=False)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.tiktoken"
    info = save_tokenizer(ranks, path)
    return load_tokenizer(path, info["pat_str"])


def test_loaded_as_a_tiktoken_encoding(tokenizer):
    assert isinstance(tokenizer.encoding, tiktoken.Encoding)
    assert tokenizer.n_vocab == 600


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trips_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_single_ids_and_never_come_from_plain_text(tokenizer):
    ids = {tokenizer.encoding.encode_single_token(t) for t in (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    assert ids == set(tokenizer.special_ids) and min(ids) == 596
    # A user's text that spells a special token is encoded as ordinary text.
    assert not set(tokenizer.encode(f"x = '{EOT}{FIM_MIDDLE}'")) & tokenizer.special_ids


def test_indentation_becomes_few_whitespace_tokens(tokenizer):
    code = "def f(x):\n        if x:\n            return x\n"
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(code)]
    assert len(pieces) < len(code) / 2
    # runs of spaces stay whitespace-only tokens: indentation never glues onto the keyword's letters
    assert all(p.strip() == "" or not p.startswith("  ") for p in pieces)


def test_rank_file_is_tiktoken_base64_format(tokenizer, tmp_path):
    texts = ["def add(a, b):\n    return a + b\n"] * 20
    ranks = train_bpe(texts, 300, show_progress=False)
    save_tokenizer(ranks, tmp_path / "t.tiktoken")
    line = (tmp_path / "t.tiktoken").read_text().splitlines()[65]
    token, rank = line.split()
    assert int(rank) == 65 and token == "QQ=="  # byte 'A'
    assert read_ranks(tmp_path / "t.tiktoken") == ranks


def test_model_dir_tokenizer_loads(tiny_model_dir):
    tok = load_tokenizer_from_dir(tiny_model_dir)
    assert tok.decode(tok.encode("print('hé')\n")) == "print('hé')\n"
