"""`code-assistant eval`: validation loss and bits per byte of a model directory."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.model import Transformer
from engine.model_dir import load_model_dir

from .config import window_length
from .data import (CollectOptions, DataError, collect, load_data_tokenizer, load_split, model_documents, read_meta,
                   tokenize_files)


@torch.no_grad()
def mean_loss(model: Transformer, tokens: np.ndarray, batch_size: int = 8, max_windows: int | None = None,
              seq_len: int = 0) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping windows of `seq_len` tokens
    (0: the model's context, at most MAX_SEQ_LEN)."""
    block = window_length(seq_len, model.config.block_size)
    n_windows = (len(tokens) - 1) // block
    if n_windows == 0:
        raise DataError(f"only {len(tokens)} tokens: fewer than one window of {block + 1}")
    if max_windows:
        n_windows = min(n_windows, max_windows)
    total, count = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc="eval", unit="batch", leave=False):
        rows = [np.asarray(tokens[i * block:i * block + block + 1], dtype=np.int64)
                for i in range(start, min(start + batch_size, n_windows))]
        batch = torch.from_numpy(np.stack(rows))
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / count


def evaluate(model_dir: Path, data_dir: Path | None = None, src: list[Path] | None = None,
             max_windows: int | None = None, seq_len: int = 0, weights: str = "float") -> dict:
    """`weights`: "float" (int8 dequantized), or "int8" / "int4" as the engine runs them on the CPU."""
    torch.set_flush_denormal(True)
    if weights == "float":
        model, tokenizer, found = load_model_dir(model_dir)
    else:
        from engine.model_dir import load_tokenizer_from_dir
        from engine.quantize import load_int4_model, load_int8_model

        model, found = (load_int4_model if weights == "int4" else load_int8_model)(model_dir)
        tokenizer = load_tokenizer_from_dir(found)
    if data_dir is not None:
        meta = read_meta(data_dir)
        if load_data_tokenizer(data_dir, meta).fingerprint() != tokenizer.fingerprint():
            raise DataError(f"{data_dir} was tokenized with another tokenizer than {model_dir}; use --src instead")
        tokens = load_split(data_dir, "val", tokenizer.n_vocab)
        n_bytes, source = meta["splits"]["val"]["bytes"], f"{data_dir} (val split)"
        n_tokens = meta["splits"]["val"]["tokens"]
    else:
        corpus = collect(src, CollectOptions(val_fraction=0.0, skip_tests=False))
        tokens = tokenize_files(corpus.train, tokenizer, "eval", model_documents(found, tokenizer))
        n_bytes, n_tokens = sum(len(f.text.encode("utf-8")) for f in corpus.train), len(tokens)
        source = ", ".join(map(str, src))
    loss = mean_loss(model, tokens, max_windows=max_windows, seq_len=seq_len)
    return {"model": str(model_dir), "weights": weights, "data": source, "tokens": int(n_tokens), "bytes": int(n_bytes),
            "val_loss": round(loss, 4), "bits_per_byte": round(loss / math.log(2) * n_tokens / n_bytes, 4)}
