"""Random Hugging Face models of every family the engine runs, made offline for tests and benchmarks.

Each is built from transformers' own config class and written with `save_pretrained`, beside a
`tokenizer.json` trained here with the `tokenizers` library on standard-library code and carrying
the family's special tokens (fill-in-the-middle, repository, begin/end of text) under the names its
model card uses. Nothing is downloaded.
"""
from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Family:
    name: str                 # what the tests call it
    config_class: str         # transformers config class
    model_class: str          # transformers model class
    specials: tuple[str, ...]  # added special tokens, in id order after the BPE vocabulary
    eos: str
    bos: str | None = None    # prepended by the tokenizer's post-processor
    sentencepiece: bool = False
    config: dict = field(default_factory=dict)


FAMILIES = {
    "gpt2": Family("gpt2", "GPT2Config", "GPT2LMHeadModel", ("<|endoftext|>",), "<|endoftext|>"),
    "santacoder": Family(  # GPTBigCode, multi-query; StarCoder 1's metadata tokens
        "santacoder", "GPTBigCodeConfig", "GPTBigCodeForCausalLM",
        ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>", "<gh_stars>"),
        "<|endoftext|>", config={"multi_query": True}),
    "codellama": Family(
        "codellama", "LlamaConfig", "LlamaForCausalLM", ("▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"), "</s>", bos="<s>",
        sentencepiece=True, config={"rope_theta": 1_000_000.0}),
    "deepseek": Family(  # Llama with linear RoPE scaling, as DeepSeek-Coder 1.x
        "deepseek", "LlamaConfig", "LlamaForCausalLM",
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"),
        "<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>",
        config={"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rope_theta": 100000.0}),
    "qwen2": Family(
        "qwen2", "Qwen2Config", "Qwen2ForCausalLM",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
         "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"), "<|endoftext|>", config={"tie_word_embeddings": True}),
    "starcoder2": Family(
        "starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM",
        ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"),
        "<|endoftext|>", config={"sliding_window": 24}),
}

# A tiny shape of each family, and the sizes the engine benchmark runs.
TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "positions": 256}
QWEN_0_5B = {"layers": 24, "hidden": 896, "heads": 14, "kv_heads": 2, "intermediate": 4864, "positions": 32768}


def stdlib_text(packages: tuple[str, ...] = ("json", "email")) -> list[str]:
    return [p.read_text(encoding="utf-8") for pkg in packages for p in sorted((STDLIB / pkg).rglob("*.py"))]


def train_tokenizer(family: Family, vocab_size: int = 600, texts: list[str] | None = None):
    """A `tokenizers.Tokenizer` in the family's style: byte-level BPE, or SentencePiece-style BPE
    with byte fallback (CodeLlama), its special tokens added after the vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = texts or stdlib_text()
    if family.sentencepiece:
        base = ("<unk>", "<s>", "</s>")
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=list(base), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        model = json.loads(tok.to_str())["model"]
        learned = sorted((i, t) for t, i in model["vocab"].items() if t not in base)
        vocab = {t: i for i, t in enumerate(base)}
        vocab.update({f"<0x{b:02X}>": len(base) + b for b in range(256)})
        for _, t in learned:
            vocab.setdefault(t, len(vocab))
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base])
    else:
        tok = Tokenizer(models.BPE())
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(family.specials), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.specials])
    if family.bos:
        bos = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A $B",
                                                           special_tokens=[(family.bos, bos)])
    return tok


def hf_config(family: Family, vocab_size: int, shape: dict, initializer_range: float = 0.02):
    import transformers

    cls = getattr(transformers, family.config_class)
    if family.config_class in ("GPT2Config", "GPTBigCodeConfig"):
        kwargs = dict(n_embd=shape["hidden"], n_layer=shape["layers"], n_head=shape["heads"],
                      n_positions=shape["positions"], n_inner=shape["intermediate"], resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        kwargs = dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                      intermediate_size=shape["intermediate"], max_position_embeddings=shape["positions"])
    return cls(vocab_size=vocab_size, initializer_range=initializer_range, **kwargs, **family.config)


def save_random_model(out: Path, family: Family, shape: dict = TINY, vocab_size: int = 600, seed: int = 0,
                      initializer_range: float = 0.02, tokenizer=None, dtype=None,
                      max_shard_size: str | None = None, model_vocab: int | None = None) -> Path:
    """A Hugging Face model directory of `family` with random weights: config.json, safetensors
    (sharded when `max_shard_size` says so), tokenizer.json, tokenizer_config.json. `model_vocab`
    gives the embedding more rows than the tokenizer has (real models pad theirs: Qwen2.5's
    151,936), so a benchmark shape needs no full-size tokenizer."""
    import torch
    import transformers

    tokenizer = tokenizer or train_tokenizer(family, vocab_size)
    n_vocab = max(model_vocab or 0, tokenizer.get_vocab_size(with_added_tokens=True))
    config = hf_config(family, n_vocab, shape, initializer_range)
    ids = {name: tokenizer.token_to_id(name) for name in (family.bos, family.eos) if name}
    config.eos_token_id = ids[family.eos]
    config.bos_token_id = ids.get(family.bos) if family.bos else None
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=family.eos,
                                                bos_token=family.bos, unk_token="<unk>" if family.sentencepiece else None,
                                                add_bos_token=bool(family.bos))
    fast.save_pretrained(out)
    return out
