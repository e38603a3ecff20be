"""Train the code BPE and save it as a tiktoken rank file.

Hugging Face `tokenizers` does the counting and merging (Rust, seconds for tens of MB; a pure
Python trainer would take minutes). Its pre-tokenizer is the same regex tiktoken splits with, and
each token's rank is the order of the merge that made it, which is what tiktoken's BPE expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import tiktoken
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from engine.tokenizer import CODE_PAT_STR, byte_decoder, SPECIAL_TOKENS, TiktokenTokenizer, make_encoding, special_token_ids, write_ranks


def train_bpe(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> dict[bytes, int]:
    """Return mergeable ranks for `vocab_size` tokens in all, the special tokens included."""
    n_ranks = vocab_size - len(SPECIAL_TOKENS)
    if n_ranks < 256:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CODE_PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_ranks, show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    to_byte = byte_decoder()
    ranks = {bytes([b]): b for b in range(256)}
    vocab = hf.get_vocab()
    merged = sorted((i, tok) for tok, i in vocab.items() if len(tok) > 1)
    for _, tok in merged:
        token_bytes = bytes(to_byte[c] for c in tok)
        if token_bytes not in ranks:
            ranks[token_bytes] = len(ranks)
    return ranks


def gpt2_ranks() -> dict[bytes, int]:
    """tiktoken's stock gpt2 ranks (needs its file already in tiktoken's cache: no network here)."""
    return tiktoken.get_encoding("gpt2")._mergeable_ranks


def save_tokenizer(ranks: dict[bytes, int], path: str | Path, kind: str = "code-bpe") -> dict:
    """Write the rank file; return the tokenizer section of config.json."""
    write_ranks(ranks, path)
    pat_str = CODE_PAT_STR if kind == "code-bpe" else tiktoken.get_encoding("gpt2")._pat_str
    return {"name": kind, "pat_str": pat_str, "n_ranks": len(ranks),
            "special_tokens": special_token_ids(len(ranks))}


def tokenizer_from_ranks(ranks: dict[bytes, int], info: dict) -> TiktokenTokenizer:
    return TiktokenTokenizer(make_encoding(info["name"], ranks, info["pat_str"]))
