"""Fill-in-the-middle at training time (Bavarian et al. 2022, "Efficient Training of Language
Models to Fill in the Middle"): split a document at two random character positions and reorder it.

The tokens are the tokenizer's own, found by their names (engine/tokenizer.py: `<fim_prefix>` for
this project and StarCoder, `<|fim_prefix|>` for Qwen2.5-Coder, `▁<PRE>` for CodeLlama,
`<｜fim▁begin｜>` for DeepSeek-Coder), laid out by engine/prompt.py's `fim_ids`, the function that
lays out a prompt at serving time:

PSM: [BOS] <prefix> P <suffix> S <middle> M <end>
SPM: [BOS] <prefix> <suffix> S <middle> P M <end>   (the paper's SPM variant 2)

<end> is the token the engine stops at (`tokenizer.eot_id`: <|endoftext|>, CodeLlama's ▁<EOT>),
then the document's own end when that is another token (CodeLlama's </s>). Text after the first
piece is encoded as a continuation (no SentencePiece word-start space), as the engine encodes the
suffix of a request.
"""
from __future__ import annotations

import numpy as np

from engine.prompt import fim_ids
from engine.tokenizer import Tokenizer

from .data import Documents


def fim_document(text: str, tokenizer: Tokenizer, rng: np.random.Generator, spm_rate: float,
                 end: list[int]) -> list[int]:
    lo, hi = sorted(rng.integers(0, len(text) + 1, size=2))
    prefix, middle, suffix = text[:lo], text[lo:hi], text[hi:]
    t = tokenizer
    spm = rng.random() < spm_rate
    return (fim_ids(t.fim, t.encode(prefix), t.encode_continuation(suffix), spm=spm)
            + t.encode_continuation(middle) + end)


def start_of_text(tokenizer: Tokenizer) -> str:
    """What decoding puts before a text that was encoded on its own: SentencePiece's word-start
    space (CodeLlama), nothing for byte-level BPE."""
    probe = tokenizer.decode(tokenizer.encode("a"))
    return probe[:-1] if probe.endswith("a") else ""


def apply_fim(tokens: np.ndarray, tokenizer: Tokenizer, rng: np.random.Generator,
              fim_rate: float, spm_rate: float, documents: Documents | None = None) -> list[int]:
    """Transform each document of a window (documents end with `documents.eos_id`) with
    probability fim_rate. A tokenizer without FIM tokens leaves the window as it is.

    The result may be a little longer or shorter than the input; the caller trims or tops it up.
    """
    documents = documents or Documents((), tokenizer.eot_id)
    if tokenizer.fim is None or fim_rate <= 0:
        return tokens.tolist()
    bos, marker = list(documents.bos_ids), start_of_text(tokenizer)
    fim_end = [tokenizer.eot_id] if documents.eos_id == tokenizer.eot_id else [tokenizer.eot_id, documents.eos_id]
    out: list[int] = []
    start = 0
    ends = np.flatnonzero(tokens == documents.eos_id).tolist() + [len(tokens)]
    for end in ends:
        doc = tokens[start:end].tolist()
        lead = bos if bos and doc[:len(bos)] == bos else []  # a window may start inside a document
        text_ids = doc[len(lead):]
        if text_ids and rng.random() < fim_rate:
            text = tokenizer.decode(text_ids)
            if lead and marker and text.startswith(marker):  # the text of a whole document, as it was encoded
                text = text[len(marker):]
            out.extend(lead + fim_document(text, tokenizer, rng, spm_rate, fim_end))
        else:
            out.extend(doc)
            if end < len(tokens):
                out.append(documents.eos_id)
        start = end + 1
    return out
