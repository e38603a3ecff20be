"""The model's tokenizer, offline: a Hugging Face `tokenizer.json` (read with the `tokenizers`
library, the same code transformers' fast tokenizers run) or this project's first format, a
tiktoken rank file.

Both give the engine the same things: ids for text (special tokens written in the text stay text),
the bytes of each token (token healing, the cache model and streaming work on bytes), the
pre-tokenizer's chunks (token healing), and the ids that matter to prompts and stopping: the
family's fill-in-the-middle and repository tokens, found by their names, never from a folder name.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import regex  # tiktoken's own dependency, for its split pattern
import tiktoken

from .model_checks import MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, ModelDirError, read_bytes, read_json

TOKENIZER_FILE = "tokenizer.tiktoken"
HF_TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<fim_prefix>", "<fim_suffix>", "<fim_middle>"
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)

# GPT-4's split pattern: letters, up to 3 digits, punctuation runs, newlines, and runs of spaces
# that leave one space to the next word, so Python indentation becomes a few whitespace tokens.
CODE_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Fill-in-the-middle token names by family (prefix, suffix, middle), as the model cards document.
FIM_STYLES = {
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),     # StarCoder 1/2, this project
    "santacoder": ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    "qwen": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),     # Qwen2.5-Coder
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),     # DeepSeek-Coder: begin, hole, end
}
# Repository-level tokens: a file separator (StarCoder2, Qwen2.5-Coder) or a file name (StarCoder 1).
FILE_SEPARATORS = ("<|file_sep|>", "<file_sep>")
REPO_NAMES = ("<|repo_name|>", "<repo_name>", "<reponame>")
FILE_NAMES = ("<filename>",)
# Tokens that end a completion besides the end of text: a new file begins, or the infill ends.
STOP_NAMES = (EOT, "<|file_sep|>", "<file_sep>", "▁<EOT>", "<EOT>", "<|fim_pad|>", "<|im_end|>", "<|EOT|>",
              "<｜end▁of▁sentence｜>", "</s>")


class TokenizerError(ValueError):
    pass


@dataclass(frozen=True)
class FimTokens:
    style: str
    prefix: int
    suffix: int
    middle: int


class Tokenizer:
    """Text <-> ids. Subclasses give `_ids`, `n_vocab`, `token_bytes` and `split`; this class finds
    the special ids by name."""

    n_vocab: int
    special_ids: frozenset[int]    # ids plain text never produces; generating one ends a completion
    added_ids: frozenset[int]      # tokens added beside the BPE vocabulary (special or not)

    def _find_specials(self, eos_ids: tuple[int, ...] = (), fim_ids: tuple[int, int, int] | None = None,
                       eot_id: int | None = None) -> None:
        """The special ids by name; `fim_ids` and `eot_id`, where the model says them (a GGUF file's
        metadata), win over the names."""
        def find(*names: str) -> int | None:
            return next((self.token_id(n) for n in names if self.token_id(n) is not None), None)

        by_name = {style: ids for style, names in FIM_STYLES.items()
                   if None not in (ids := tuple(self.token_id(n) for n in names))}
        if fim_ids is not None:
            style = next((style for style, ids in by_name.items() if ids == tuple(fim_ids)), "given")
            self.fim = FimTokens(style, *fim_ids)
        else:
            self.fim = next((FimTokens(style, *ids) for style, ids in by_name.items()), None)
        self.file_sep_id = find(*FILE_SEPARATORS)
        self.repo_name_id = find(*REPO_NAMES)
        self.filename_id = find(*FILE_NAMES)
        # A stop name counts only as an added token: "</s>" may be plain text in a code vocabulary.
        stops = ([i for i in (self.token_id(n) for n in STOP_NAMES) if i in self.added_ids] + list(eos_ids)
                 + ([eot_id] if eot_id is not None else []))
        if not stops:
            raise TokenizerError("the tokenizer has no end-of-text token (eos_token or <|endoftext|>)")
        self.eot_id = (eot_id if eot_id is not None else
                       self.token_id(EOT) if self.token_id(EOT) in self.added_ids else stops[0])
        self.special_ids = self.special_ids | frozenset(stops)

    # The ids the legacy trainer's FIM transform uses (training/fim.py).
    @property
    def fim_prefix_id(self) -> int | None:
        return self.fim.prefix if self.fim else None

    @property
    def fim_suffix_id(self) -> int | None:
        return self.fim.suffix if self.fim else None

    @property
    def fim_middle_id(self) -> int | None:
        return self.fim.middle if self.fim else None

    def token_id(self, name: str) -> int | None:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids for text, special-token names in it included as plain text; no BOS."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_continuation(self, text: str) -> list[int]:
        """Ids for text that continues earlier text (no start-of-text marker such as
        SentencePiece's leading space)."""
        return self.encode(text)

    def decode_bytes(self, ids: list[int]) -> bytes:
        table = self.token_bytes()
        return b"".join(table[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        """The bytes of every id (b"" for special tokens), what streaming concatenates."""
        raise NotImplementedError

    def split(self, text: str) -> list[str]:
        """The pre-tokenizer's chunks of `text`: BPE never merges across them."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """The same for two tokenizers that give every id the same bytes and the same special ids,
        whatever file format they were read from."""
        import hashlib

        digest = hashlib.sha256(str(sorted(self.special_ids)).encode())
        for token in self.token_bytes():
            digest.update(len(token).to_bytes(2, "little") + token)
        return digest.hexdigest()


class TiktokenTokenizer(Tokenizer):
    """This project's first format: a tiktoken rank file plus <|endoftext|> and the FIM tokens."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.n_vocab = encoding.n_vocab
        self.bos_ids: list[int] = []
        self.special_ids = self.added_ids = frozenset(encoding.encode_single_token(t) for t in SPECIAL_TOKENS)
        self._split_pattern = regex.compile(encoding._pat_str)
        self._bytes: list[bytes] | None = None
        self._find_specials()

    def token_id(self, name: str) -> int | None:
        try:
            return self.encoding.encode_single_token(name)
        except KeyError:
            return None

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.encoding.decode_bytes(ids)

    def token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            self._bytes = [b"" if i in self.special_ids else self.encoding.decode_single_token_bytes(i)
                           for i in range(self.n_vocab)]
        return self._bytes

    def split(self, text: str) -> list[str]:
        return self._split_pattern.findall(text)


def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the alphabet byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class HFTokenizer(Tokenizer):
    """A `tokenizer.json`: byte-level BPE (GPT-2, StarCoder, Qwen, DeepSeek-Coder) or SentencePiece
    BPE with byte fallback (CodeLlama)."""

    def __init__(self, spec: dict, eos_names: tuple[str, ...] = (), eos_ids: tuple[int, ...] = (),
                 fim_ids: tuple[int, int, int] | None = None, eot_id: int | None = None):
        from tokenizers import Tokenizer as Backend

        text = json.dumps(spec)
        self.backend = Backend.from_str(text)
        self.backend.encode_special_tokens = True  # "<|endoftext|>" in a user's code is text
        self.n_vocab = self.backend.get_vocab_size(with_added_tokens=True)
        self._vocab = self.backend.get_vocab(with_added_tokens=True)
        added = spec.get("added_tokens") or []
        self.special_ids = frozenset(t["id"] for t in added if t.get("special"))
        self.added_ids = frozenset(t["id"] for t in added)
        self._sentencepiece = _is_sentencepiece(spec)
        self._continuation = Backend.from_str(json.dumps(_without_prefix_space(spec))) if self._sentencepiece else None
        if self._continuation is not None:
            self._continuation.encode_special_tokens = True
        with_specials = self.backend.encode("a", add_special_tokens=True).ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        # What the post-processor puts before the text (Llama-family BOS), never after it.
        self.bos_ids = with_specials[:with_specials.index(plain[0])] if plain and plain[0] in with_specials else []
        self._bytes: list[bytes] | None = None
        eos = tuple(i for i in (self.token_id(n) for n in eos_names) if i is not None) + tuple(eos_ids)
        self._find_specials(eos, fim_ids, eot_id)

    def token_id(self, name: str) -> int | None:
        return self._vocab.get(name)

    def encode(self, text: str) -> list[int]:
        # encode_batch releases the GIL while it runs and encode does not: a 60,000-character prompt
        # (~200 ms) would otherwise stall every other thread, the HTTP server's event loop included.
        return self.backend.encode_batch([text], add_special_tokens=False)[0].ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_continuation(self, text: str) -> list[int]:
        if self._continuation is None:
            return self.encode(text)
        return self._continuation.encode(text, add_special_tokens=False).ids

    def token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            table = [b""] * self.n_vocab
            to_byte = byte_decoder()
            for token, i in self._vocab.items():
                if i in self.special_ids or i >= self.n_vocab:
                    continue
                if self._sentencepiece:
                    table[i] = _piece_bytes(token)
                elif all(c in to_byte for c in token):
                    table[i] = bytes(to_byte[c] for c in token)
                else:  # an added, non-special token written as plain text
                    table[i] = token.encode("utf-8")
            self._bytes = table
        return self._bytes

    def split(self, text: str) -> list[str]:
        pre = self.backend.pre_tokenizer
        if pre is None:
            return [text] if text else []
        starts = sorted({start for _, (start, _) in pre.pre_tokenize_str(text)} | {0})
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if a < b]


def _is_sentencepiece(spec: dict) -> bool:
    return '"Metaspace"' in json.dumps(spec.get("pre_tokenizer")) or '"ByteFallback"' in json.dumps(spec.get("decoder"))


def _without_prefix_space(spec: dict) -> dict:
    """The same tokenizer without SentencePiece's leading "▁" on the first word."""
    spec = json.loads(json.dumps(spec))
    pre = spec.get("pre_tokenizer") or {}
    for p in [pre] + list(pre.get("pretokenizers") or []):
        if p.get("type") == "Metaspace":
            p["prepend_scheme"] = "never"
            p["add_prefix_space"] = False
    norm = spec.get("normalizer") or {}
    if norm.get("type") == "Sequence":
        norm["normalizers"] = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]
    elif norm.get("type") == "Prepend":
        spec["normalizer"] = None
    return spec


def _piece_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode("utf-8")


# ---- loading ------------------------------------------------------------------------------------
def tokenizer_file_limit(vocab_size: int | None) -> int:
    """The most bytes a tokenizer file for `vocab_size` tokens may hold: parsing one takes ~20 times
    its size in memory, so a file far beyond its vocabulary is refused before it is read (real ones
    hold 40 to 140 bytes a token: Qwen2.5's 7 MB for 151 k, Gemma's 34 MB for 256 k)."""
    if vocab_size is None:
        return MAX_TOKENIZER_BYTES
    return min(MAX_TOKENIZER_BYTES, (4 << 20) + 256 * vocab_size)


def read_ranks(path: str | Path, max_vocab: int | None = None) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = read_bytes(Path(path), tokenizer_file_limit(max_vocab)).decode("ascii").splitlines()
    except ModelDirError as e:
        raise TokenizerError(str(e)) from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerError(f"{path}:{lineno}: not a tiktoken rank line") from e
    if not ranks:
        raise TokenizerError(f"tokenizer file {path} is empty")
    return ranks


def write_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    lines = (f"{base64.b64encode(tok).decode('ascii')} {rank}"
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def special_token_ids(n_ranks: int) -> dict[str, int]:
    return {tok: n_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}


def make_encoding(name: str, ranks: dict[bytes, int], pat_str: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens=special_token_ids(len(ranks)))


def load_tokenizer(path: str | Path, pat_str: str = CODE_PAT_STR, name: str = "code-bpe",
                   max_vocab: int | None = None) -> TiktokenTokenizer:
    return TiktokenTokenizer(make_encoding(name, read_ranks(path, max_vocab), pat_str))


def load_hf_tokenizer(model_dir: str | Path, eos_ids: tuple[int, ...] = (), max_vocab: int | None = None,
                      fim_ids: tuple[int, int, int] | None = None, eot_id: int | None = None) -> HFTokenizer:
    """tokenizer.json of a Hugging Face directory, with the end-of-text names from
    tokenizer_config.json / special_tokens_map.json and the ids config.json gives (`fim_ids`,
    `eot_id`: where the model names them by id, over the names). `max_vocab` (the model's
    vocab_size) bounds the file's size and its tokens before the tokenizer is built."""
    model_dir = Path(model_dir)
    path = model_dir / HF_TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{model_dir} has no {HF_TOKENIZER_FILE} (only fast tokenizers are supported; "
                             f"convert with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    try:
        eos_names = tuple(_eos_names(model_dir))
        # The tokenizers library bounds its own nesting; json's parser stops at the recursion limit.
        spec = read_json(path, tokenizer_file_limit(max_vocab), model_dir, max_depth=None)
    except ModelDirError as e:
        raise TokenizerError(str(e)) from None
    if not isinstance(spec, dict):
        raise TokenizerError(f"{path} must hold a JSON object, not {type(spec).__name__}")
    vocab = spec.get("model", {}).get("vocab") if isinstance(spec.get("model"), dict) else None
    if max_vocab is not None and isinstance(vocab, (dict, list)) and len(vocab) > max_vocab:
        raise TokenizerError(f"{path} has {len(vocab)} tokens, the model only {max_vocab}")
    try:
        return HFTokenizer(spec, eos_names, eos_ids, fim_ids, eot_id)
    except TokenizerError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as e:
        raise TokenizerError(f"{path} is not a readable tokenizer: {e}") from None
    except Exception as e:  # the tokenizers library raises its own exception type for bad specs
        raise TokenizerError(f"{path} is not a tokenizer the tokenizers library can load: {e}") from None


def _eos_names(model_dir: Path):
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model_dir / name
        if not path.exists():
            continue
        data = read_json(path, MAX_CONFIG_BYTES, model_dir)
        if not isinstance(data, dict):
            raise TokenizerError(f"{path} must hold a JSON object, not {type(data).__name__}")
        eos = data.get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            yield eos


def ranks_to_tokenizer_json(ranks: dict[bytes, int], pat_str: str, specials: dict[str, int]) -> dict:
    """A tiktoken rank file as an equivalent tokenizer.json (byte-level BPE, the same split
    pattern, merges recovered from the ranks), so transformers and other servers can load it."""
    from tokenizers import Regex, Tokenizer as Backend, decoders, models, pre_tokenizers

    to_char = {b: c for c, b in byte_decoder().items()}
    vocab = {"".join(to_char[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        left, right = _last_merge(token, ranks, rank)
        merges.append(("".join(to_char[b] for b in left), "".join(to_char[b] for b in right)))
    backend = Backend(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(name, special=True, normalized=False)
                                for name, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    return json.loads(backend.to_str())


def hf_tokenizer_files(ranks: dict[bytes, int], pat_str: str, context: int) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for our code BPE, as
    transformers' AutoTokenizer reads them."""
    specials = special_token_ids(len(ranks))
    spec = ranks_to_tokenizer_json(ranks, pat_str, specials)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOT, "bos_token": None, "unk_token": None,
              "pad_token": None, "add_bos_token": False, "add_eos_token": False, "model_max_length": context,
              "clean_up_tokenization_spaces": False}
    special_map = {"eos_token": EOT, "additional_special_tokens": list(SPECIAL_TOKENS[1:])}
    return {HF_TOKENIZER_FILE: json.dumps(spec, ensure_ascii=False), "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special_map, indent=2)}


def _last_merge(token: bytes, ranks: dict[bytes, int], rank: int) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make `token`: run BPE on its bytes with the merges of lower
    rank only (tiktoken's own algorithm) until two parts are left."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise TokenizerError(f"token {token!r} cannot be made by a merge of lower-ranked tokens")
    return parts[0], parts[1]
