"""Shared fixtures: a small model directory made by the project's own code, in seconds."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from engine.model import GPT, GPTConfig
from engine.model_dir import save_model_dir
from training.data import CollectOptions, collect
from training.tokenizer import save_tokenizer, train_bpe

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def make_model_dir(out: Path, vocab_size: int = 1024, seed: int = 0, **model_kwargs) -> Path:
    """A real tokenizer trained on two stdlib packages and a randomly initialised GPT."""
    corpus = collect([STDLIB / "json", STDLIB / "email"], CollectOptions(val_fraction=0.0))
    ranks = train_bpe((f.text for f in corpus.train), vocab_size, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    info = save_tokenizer(ranks, out / "tokenizer.src")
    torch.manual_seed(seed)
    config = GPTConfig(**{"vocab_size": vocab_size, "block_size": 128, "n_layer": 2, "n_head": 4, "n_embd": 64,
                          **model_kwargs})
    save_model_dir(out, GPT(config), out / "tokenizer.src", info, {"note": "random weights, for tests"})
    (out / "tokenizer.src").unlink()
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"))
