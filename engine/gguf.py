"""GGUF files (llama.cpp's and Ollama's format) as model directories.

A GGUF file becomes, once, a Hugging Face directory in a cache ($CODE_ASSISTANT_GGUF_CACHE, else
~/.cache/code-assistant/gguf): config.json from the file's `ARCH.*` metadata, read through the same
family code as any downloaded config (engine/families.py); the tensors under the names
transformers uses, dequantised with the `gguf` package (F32, F16 and BF16 stay as they are;
quantised types become float16, which halves float32's disk and moves a weight by at most 1/16
of a Q8_0 step: see `GGUFFile.tensor`); and tokenizer.json
built from `tokenizer.ggml.*`, with the FIM and end-of-text ids the metadata gives recorded in
config.json (`code_assistant.fim_token_ids`, `eot_token_id`). From there the engine loads it as any
other directory, int8 by default, so a Q4_K file costs what its float model costs once loaded.

What the converter (convert_hf_to_gguf.py) did to the tensors is undone here: Llama's q/k rows are
permuted for llama.cpp's interleaved RoPE, GPT-2's Conv1D weights are transposed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .families import HF_CLASSES, FamilyError, config_from_hf, weight_rules
from .model import ModelConfig
from .model_dir import CONFIG_FILE, FORMAT, WEIGHTS_FILE, ModelDirError
from .tokenizer import HF_TOKENIZER_FILE

# GGUF architecture -> ours (engine/families.py). GGUF's `starcoder` is GPTBigCode.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "starcoder2": "starcoder2", "gpt2": "gpt2",
                 "starcoder": "gpt_bigcode"}
# Q4_1, Q5_0, Q5_1: besides their own files, what llama-quantize falls back to where a K-quant does not fit
# (rows not a multiple of 256: Qwen2.5-0.5B's 896; its Q4_K_M file is mostly Q5_0 and Q8_0, a Q5_K_M Q5_1).
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), by `tokenizer.ggml.pre`.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRE_TOKENIZERS = {
    "qwen2": [r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
              r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""],
    "llama-bpe": [r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"""
                  r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""],
    "starcoder": [r"\p{N}", GPT2_SPLIT],
    "refact": [r"\p{N}", GPT2_SPLIT],
    "gpt-2": [GPT2_SPLIT],
    "default": [GPT2_SPLIT],
}
CONTROL, USER_DEFINED, BYTE = 3, 4, 6   # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
# Where a file names its fill-in-the-middle tokens (prefix, suffix, middle): llama.cpp's keys, then
# the older ones (CodeLlama's early files). llama.cpp reads them the same way before it looks at text.
FIM_KEYS = (("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id"),
            ("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id"))


CACHE_LAYOUT = "quantised-as-float16"
FLOAT16_MAX = 65504.0


def cache_dir() -> Path:
    if os.environ.get("CODE_ASSISTANT_GGUF_CACHE"):
        return Path(os.environ["CODE_ASSISTANT_GGUF_CACHE"])
    return Path(os.environ.get("CODE_ASSISTANT_CACHE") or Path.home() / ".cache" / "code-assistant") / "gguf"


def gguf_to_model_dir(path: Path) -> Path:
    """The model directory of a GGUF file, written once per file (its path, size and mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    # CACHE_LAYOUT in the key: a directory an older version wrote (float32) is not taken for this one's
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{CACHE_LAYOUT}".encode()).hexdigest()[:16]
    out = cache_dir() / f"{path.stem[:60]}-{key}"
    if (out / CONFIG_FILE).is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_model_dir(path, tmp)
        tmp.rename(out)
    except FileExistsError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- reading ------------------------------------------------------------------------------------
class GGUFFile:
    def __init__(self, path: Path):
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(path)
        except (OSError, ValueError, KeyError) as e:
            raise ModelDirError(f"{path} is not a readable GGUF file: {e}") from e
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise ModelDirError(f"{self.path}: GGUF metadata lacks {key}")
        return value

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor in numpy's (row-major) order: F32, F16 and BF16 as they are; a quantised type
        dequantised to float16 (float32 where a value is beyond float16's range). Float16 keeps 11
        significant bits: a weight moves by at most 2^-11 of itself (by 2^-25 below 2^-14, where
        float16 is subnormal): at most 1/16 of a Q8_0 step (its weights are at most 127 steps),
        1/256 of a Q4_0 step; and a 0.5B Q4_K_M file's directory takes ~1 GB, not ~2 GB."""
        from gguf import GGMLQuantizationType, dequantize

        t = self.tensors.get(name)
        if t is None:
            raise ModelDirError(f"{self.path}: no tensor {name}")
        kind = GGMLQuantizationType(t.tensor_type)
        if kind.name not in TENSOR_TYPES:
            raise ModelDirError(f"{self.path}: tensor {name} is {kind.name}; supported: {', '.join(TENSOR_TYPES)}")
        shape = tuple(int(n) for n in reversed(t.shape))
        if kind.name == "F16":
            return torch.from_numpy(np.array(t.data, dtype=np.float16).reshape(shape))
        if kind.name == "BF16":
            raw = np.array(t.data).view(np.int16).reshape(shape)
            return torch.from_numpy(raw).view(torch.bfloat16)
        values = np.array(dequantize(t.data, kind), dtype=np.float32).reshape(shape)
        if kind.name == "F32" or not np.abs(values).max(initial=0.0) < FLOAT16_MAX:
            return torch.from_numpy(values)
        return torch.from_numpy(values.astype(np.float16))


# ---- config -------------------------------------------------------------------------------------
def hf_config(f: GGUFFile) -> dict:
    """config.json in the Hugging Face class's terms, from the file's metadata and tensor shapes."""
    gguf_arch = f.require("general.architecture")
    if gguf_arch not in ARCHITECTURES:
        raise ModelDirError(f"{f.path}: GGUF architecture {gguf_arch!r} is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[gguf_arch]

    def meta(key: str, default=None):
        return f.get(f"{gguf_arch}.{key}", default)

    embed = f.tensors.get("token_embd.weight")
    if embed is None:
        raise ModelDirError(f"{f.path}: no token_embd.weight tensor")
    vocab_size = int(embed.shape[1])
    up = f.tensors.get("blk.0.ffn_up.weight")
    intermediate = int(up.shape[1]) if up is not None else meta("feed_forward_length")
    n_head = meta("attention.head_count")
    # llama.cpp stops at the end-of-generation token (EOT, e.g. <|im_end|>) as well as at EOS
    stops = [i for i in (f.get("tokenizer.ggml.eos_token_id"), f.get("tokenizer.ggml.eot_token_id")) if i is not None]
    common = {"architectures": [HF_CLASSES[arch]], "model_type": arch, "vocab_size": vocab_size,
              "bos_token_id": f.get("tokenizer.ggml.bos_token_id"), "eos_token_id": sorted(set(stops)) or None,
              "tie_word_embeddings": "output.weight" not in f.tensors}
    if arch in ("gpt2", "gpt_bigcode"):
        return {**common, "n_embd": meta("embedding_length"), "n_layer": meta("block_count"), "n_head": n_head,
                "n_positions": meta("context_length"), "n_inner": intermediate,
                "layer_norm_epsilon": meta("attention.layer_norm_epsilon", 1e-5),
                "multi_query": meta("attention.head_count_kv", n_head) == 1}
    hidden = meta("embedding_length")
    config = {**common, "hidden_size": hidden, "num_hidden_layers": meta("block_count"),
              "num_attention_heads": n_head, "num_key_value_heads": meta("attention.head_count_kv", n_head),
              "head_dim": meta("attention.key_length") or (hidden // n_head if n_head else None),
              "intermediate_size": intermediate, "max_position_embeddings": meta("context_length"),
              "rope_theta": meta("rope.freq_base", 10000.0)}
    scaling = meta("rope.scaling.type")
    if scaling not in (None, "none"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": meta("rope.scaling.factor", 1.0)}
        if meta("rope.scaling.original_context_length"):
            config["rope_scaling"]["original_max_position_embeddings"] = meta("rope.scaling.original_context_length")
    if meta("attention.sliding_window"):
        config["sliding_window"] = meta("attention.sliding_window")
    if arch == "starcoder2":
        return {**config, "norm_epsilon": meta("attention.layer_norm_epsilon", 1e-5),
                "use_bias": "blk.0.attn_q.bias" in f.tensors, "hidden_act": "gelu_pytorch_tanh"}
    config["rms_norm_eps"] = meta("attention.layer_norm_rms_epsilon", 1e-6)
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in f.tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in f.tensors
    return config


# ---- tensors ------------------------------------------------------------------------------------
def hf_tensors(f: GGUFFile, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors under transformers' names: every name the family's rules read, found through
    the gguf package's own name table (the one the converter wrote with), the converter's changes
    undone."""
    import gguf

    gguf_arch = f.require("general.architecture")
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH[gguf_arch.upper()], config.n_layer)
    out = {}
    for rule in weight_rules(config):
        for name in rule.theirs:
            theirs = table.get_name(name, try_suffixes=(".weight", ".bias"))
            if theirs is None:
                raise ModelDirError(f"{f.path}: the gguf package has no GGUF name for {name}")
            t = f.tensor(theirs)
            if config.arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                t = t.t()
            if config.arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
                t = unpermute(t, config.n_head)
            if config.arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
                t = unpermute(t, config.n_kv_head)
            out[name] = t.contiguous()
    return out


def unpermute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of convert_hf_to_gguf.py's LlamaModel.permute: each head's rows back from
    (pairs, 2) to (2, halves), the rotate-half layout transformers (and we) use."""
    return t.reshape(n_head, t.shape[0] // n_head // 2, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


# ---- tokenizer ----------------------------------------------------------------------------------
def tokenizer_json(f: GGUFFile) -> dict:
    """tokenizer.json for the `tokenizers` library from `tokenizer.ggml.*`: byte-level BPE with
    merges (`gpt2`), or SentencePiece BPE with byte fallback (`llama`), merges by piece score."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    style = f.require("tokenizer.ggml.model")
    tokens = list(f.require("tokenizer.ggml.tokens"))
    types = list(f.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    if style == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in f.require("tokenizer.ggml.merges")]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=f.get("tokenizer.ggml.pre") == "llama-bpe"))
        pre = f.get("tokenizer.ggml.pre") or "default"
        splits = PRE_TOKENIZERS.get(pre, PRE_TOKENIZERS["default"])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    elif style == "llama":
        scores = list(f.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=sentencepiece_merges(tokens, scores, types),
                                   unk_token=tokens[f.get("tokenizer.ggml.unknown_token_id", 0)], byte_fallback=True))
        # As SentencePiece (and llama.cpp) do: one "▁" before the text always, spaces as "▁", and
        # no pre-tokenizer, so pieces run across spaces ("▁▁▁▁return")
        prefix = [normalizers.Prepend("▁")] if f.get("tokenizer.ggml.add_space_prefix", True) else []
        tok.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        raise ModelDirError(f"{f.path}: tokenizer model {style!r} is not supported (gpt2 or llama)")
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL])
    bos_id = f.get("tokenizer.ggml.bos_token_id")
    # llama.cpp's default where the file does not say: a BOS for SentencePiece vocabularies only
    if f.get("tokenizer.ggml.add_bos_token", style == "llama") and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, bos_id)])
    return json.loads(tok.to_str())


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary, as transformers' converter makes them: every split
    of a piece into two pieces, the piece of the highest score merged first."""
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind not in (CONTROL, BYTE)}
    merges = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def special_token_ids(f: GGUFFile) -> dict:
    """config.json's `fim_token_ids` and `eot_token_id` from the metadata, where it has them (ids in
    the vocabulary): the engine then takes them over finding tokens by their text, which stays the
    fallback (engine/tokenizer.py). The end of text is EOT where the file has one (llama.cpp's
    end-of-generation token, e.g. <|im_end|> or <EOT>), else EOS."""
    n = len(f.require("tokenizer.ggml.tokens"))

    def is_id(i) -> bool:
        return isinstance(i, int) and 0 <= i < n

    out = {}
    for keys in FIM_KEYS:
        ids = [f.get(k) for k in keys]
        if all(map(is_id, ids)):
            out["fim_token_ids"] = ids
            break
    eot = next((i for i in (f.get("tokenizer.ggml.eot_token_id"), f.get("tokenizer.ggml.eos_token_id")) if is_id(i)),
               None)
    if eot is not None:
        out["eot_token_id"] = eot
    return out


def tokenizer_config(f: GGUFFile) -> dict:
    tokens = f.require("tokenizer.ggml.tokens")

    def name(key: str):
        i = f.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("tokenizer.ggml.bos_token_id"),
            "eos_token": name("tokenizer.ggml.eot_token_id") or name("tokenizer.ggml.eos_token_id"),
            "add_bos_token": bool(f.get("tokenizer.ggml.add_bos_token", f.get("tokenizer.ggml.model") == "llama")),
            "clean_up_tokenization_spaces": False}


# ---- writing ------------------------------------------------------------------------------------
def write_model_dir(path: Path, out: Path) -> Path:
    f = GGUFFile(path)
    raw = hf_config(f)
    try:
        config = config_from_hf(raw)
    except FamilyError as e:
        raise ModelDirError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ModelDirError(f"{path}: bad model config from the GGUF metadata: {e}") from e
    name = f.get("general.name") or path.stem
    raw["code_assistant"] = {"format": FORMAT, "quantization": None, "name": name, **special_token_ids(f),
                             "converted_from": {"gguf": str(path), "file_type": f.get("general.file_type")}}
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(f, config)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / HF_TOKENIZER_FILE).write_text(json.dumps(tokenizer_json(f), ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(f), indent=2), encoding="utf-8")
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return out
