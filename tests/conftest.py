"""Shared fixtures: a small model directory made by the project's own code, in seconds."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from engine.model import ModelConfig, Transformer
from engine.model_dir import save_model_dir
from engine.tokenizer import CODE_PAT_STR, hf_tokenizer_files, special_token_ids
from training.data import CollectOptions, collect
from training.tokenizer import train_bpe

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_ranks(vocab_size: int = 1024) -> dict[bytes, int]:
    """A real code BPE trained on two stdlib packages (a second or two)."""
    corpus = collect([STDLIB / "json", STDLIB / "email"], CollectOptions(val_fraction=0.0))
    return train_bpe((f.text for f in corpus.train), vocab_size, show_progress=False)


def make_model_dir(out: Path, vocab_size: int = 1024, seed: int = 0, ranks: dict | None = None,
                   **model_kwargs) -> Path:
    """A Hugging Face directory as `train` exports it: a real tokenizer and a random GPT-2."""
    ranks = ranks or stdlib_ranks(vocab_size)
    torch.manual_seed(seed)
    config = ModelConfig(**{"vocab_size": vocab_size, "block_size": 128, "n_layer": 2, "n_head": 4, "n_embd": 64,
                            **model_kwargs})
    eot = special_token_ids(len(ranks))["<|endoftext|>"]
    return save_model_dir(out, Transformer(config), hf_tokenizer_files(ranks, CODE_PAT_STR, config.block_size),
                          eot, eot, {"note": "random weights, for tests"})


@pytest.fixture(scope="session")
def code_bpe() -> dict[bytes, int]:
    return stdlib_ranks()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, code_bpe) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"), ranks=code_bpe)
