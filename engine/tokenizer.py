"""Load the model's tokenizer: a tiktoken rank file plus special tokens, offline.

The rank file is tiktoken's own format (one `base64(token_bytes) rank` per line). Special tokens
follow the ranks and are recorded in config.json.
"""
from __future__ import annotations

import base64
from pathlib import Path

import tiktoken

TOKENIZER_FILE = "tokenizer.tiktoken"
EOT = "<|endoftext|>"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<fim_prefix>", "<fim_suffix>", "<fim_middle>"
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)

# GPT-4's split pattern: letters, up to 3 digits, punctuation runs, newlines, and runs of spaces
# that leave one space to the next word, so Python indentation becomes a few whitespace tokens.
CODE_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TokenizerError(ValueError):
    pass


def read_ranks(path: str | Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
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


class Tokenizer:
    """tiktoken.Encoding plus the ids the engine needs. Plain text never produces special ids."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.eot_id = encoding.encode_single_token(EOT)
        self.fim_prefix_id = encoding.encode_single_token(FIM_PREFIX)
        self.fim_suffix_id = encoding.encode_single_token(FIM_SUFFIX)
        self.fim_middle_id = encoding.encode_single_token(FIM_MIDDLE)
        self.special_ids = frozenset((self.eot_id, self.fim_prefix_id, self.fim_suffix_id, self.fim_middle_id))

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids, errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.encoding.decode_bytes(ids)

    def fim_prompt(self, prefix: str, suffix: str) -> list[int]:
        """PSM order, as in training: <fim_prefix> prefix <fim_suffix> suffix <fim_middle>."""
        return ([self.fim_prefix_id] + self.encode(prefix) + [self.fim_suffix_id]
                + self.encode(suffix) + [self.fim_middle_id])


def make_encoding(name: str, ranks: dict[bytes, int], pat_str: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens=special_token_ids(len(ranks)))


def load_tokenizer(path: str | Path, pat_str: str = CODE_PAT_STR, name: str = "code-bpe") -> Tokenizer:
    return Tokenizer(make_encoding(name, read_ranks(path), pat_str))
