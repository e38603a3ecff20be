"""`train --init DIR`: start from a pretrained model directory and export in its own terms.

DIR is what `serve --model` takes: a Hugging Face directory of any family the engine runs (its
config.json, safetensors weights, tokenizer.json), an int8 copy (dequantized to train), or this
project's first format. The fine-tuned model keeps the base model's config.json, tokenizer files
and generation config, so transformers, vLLM or llama.cpp's converter read it as they read the
base; only the weights change (written in fp32, the precision they were trained in).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.model import Transformer
from engine.model_dir import load_model_dir
from engine.tokenizer import CODE_PAT_STR, TOKENIZER_FILE, Tokenizer, hf_tokenizer_files, read_ranks

from .data import HF_TOKENIZER_FILES

GENERATION_CONFIG = "generation_config.json"


@dataclass
class ExportFormat:
    """What an exported model directory carries beside the weights."""
    tokenizer_files: dict[str, str]   # file name -> text
    bos_id: int | None
    eos_id: int | None
    base_config: dict | None = None   # a fine-tuned model's base config.json; None: written from the model config


@dataclass
class Pretrained:
    model: Transformer
    tokenizer: Tokenizer
    export: ExportFormat


def load_pretrained(path: str | Path) -> Pretrained:
    """The model (fp32, ready to train), its tokenizer and how to export it; ModelDirError for a
    directory that cannot be used, in one line."""
    model, tokenizer, model_dir = load_model_dir(path)
    model.train()
    if model_dir.legacy:
        pat_str = model_dir.raw.get("tokenizer", {}).get("pat_str", CODE_PAT_STR)
        files = hf_tokenizer_files(read_ranks(model_dir.path / TOKENIZER_FILE), pat_str, model.config.block_size)
        export = ExportFormat(files, tokenizer.eot_id, tokenizer.eot_id)
    else:
        names = [n for n in (*HF_TOKENIZER_FILES, GENERATION_CONFIG) if (model_dir.path / n).is_file()]
        files = {n: (model_dir.path / n).read_text(encoding="utf-8") for n in names}
        base = {k: v for k, v in model_dir.raw.items() if k != "code_assistant"}  # an int8 copy's marker
        export = ExportFormat(files, base.get("bos_token_id"), base.get("eos_token_id"), base)
    return Pretrained(model, tokenizer, export)
