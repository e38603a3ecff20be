"""Fill-in-the-middle at training time (Bavarian et al. 2022, "Efficient Training of Language
Models to Fill in the Middle"): split a document at two random character positions and reorder it.

PSM: <fim_prefix> P <fim_suffix> S <fim_middle> M <|endoftext|>
SPM: <fim_prefix> <fim_suffix> S <fim_middle> P M <|endoftext|>   (the paper's SPM variant 2)
"""
from __future__ import annotations

import numpy as np

from engine.tokenizer import Tokenizer


def fim_document(text: str, tokenizer: Tokenizer, rng: np.random.Generator, spm_rate: float) -> list[int]:
    lo, hi = sorted(rng.integers(0, len(text) + 1, size=2))
    prefix, middle, suffix = text[:lo], text[lo:hi], text[hi:]
    t = tokenizer
    if rng.random() < spm_rate:
        return ([t.fim_prefix_id, t.fim_suffix_id] + t.encode(suffix) + [t.fim_middle_id]
                + t.encode(prefix) + t.encode(middle) + [t.eot_id])
    return ([t.fim_prefix_id] + t.encode(prefix) + [t.fim_suffix_id] + t.encode(suffix)
            + [t.fim_middle_id] + t.encode(middle) + [t.eot_id])


def apply_fim(tokens: np.ndarray, tokenizer: Tokenizer, rng: np.random.Generator,
              fim_rate: float, spm_rate: float) -> list[int]:
    """Transform each <|endoftext|>-separated document of a window with probability fim_rate.

    The result may be a little longer or shorter than the input; the caller trims or tops it up.
    """
    out: list[int] = []
    start = 0
    eot_positions = np.flatnonzero(tokens == tokenizer.eot_id).tolist() + [len(tokens)]
    for end in eot_positions:
        doc = tokens[start:end].tolist()
        if doc and rng.random() < fim_rate:
            out.extend(fim_document(tokenizer.decode(doc), tokenizer, rng, spm_rate))
        else:
            out.extend(doc)
            if end < len(tokens):
                out.append(tokenizer.eot_id)
        start = end + 1
    return out
