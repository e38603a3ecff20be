"""A token suffix array: the longest earlier occurrence of what precedes the cursor, and what followed.

Documents (token sequences) are laid end to end, each after a separator, and every position that
holds a token is sorted by the MAX_MATCH tokens that start there (prefix doubling in numpy: six
sorts). A query finds the longest tail of a history that occurs in some document with a token
after it, by binary search over the sorted positions: O(MAX_MATCH * log n) token comparisons, so
the time grows with the logarithm of the repository, not with its size. The comparisons run on a
big-endian byte copy of the tokens, where bytes order equals token order, so each is one memcmp.

`longest_match` is the one query: the cache model mixes its answer into decoding, and a speculative
decoder can take `following(...)` of a match as its draft. Generation asks once a token: given the
match one token earlier, the tail one token longer is searched first, among that match's occurrences
only (they are a contiguous run of the sorted positions), and a match with few occurrences is read
without numpy, whose per-call cost is most of a small query.

On disk: safetensors (the tokens, the sorted positions, each document's start) with a JSON header
under the key "index" (format, the tokenizer's fingerprint, document names). No pickle.
"""
from __future__ import annotations

import json
import struct
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "code-assistant-suffix-index/1"
MAX_MATCH = 64          # tokens: positions are sorted by this many, so no match is longer
SEPARATOR = 0xFFFFFFFF  # before every document; above every token id, so it sorts last
SAMPLE = 256            # occurrences read for the next-token counts of a frequent match
FEW = 24                # occurrences read in plain Python: below this numpy's per-call cost dominates
TOKEN = struct.Struct(">I")


class IndexFormatError(ValueError):
    """An index file that is not ours, of another version, or for another tokenizer."""


@dataclass(frozen=True)
class Match:
    """The longest tail of the history that occurs (followed by a token) in the index."""
    length: int                 # tokens matched; 0: not even the last token occurs
    ids: np.ndarray             # distinct tokens that followed the occurrences read
    counts: np.ndarray          # how often each followed
    occurrences: int            # live occurrences of the matched tail (estimated past SAMPLE)
    ends: np.ndarray            # positions just after some occurrences: where `following` reads
    index: "SuffixIndex | None" = None   # the index the positions are in
    span: tuple[int, int] | None = None  # the matched tail's run of the index's sorted positions

    @property
    def found(self) -> bool:
        return self.length > 0

    def draft(self, n: int) -> list[int]:
        """The `n` tokens (fewer at a document's end) that followed the last occurrence read: a
        speculative decoder's draft."""
        if not self.found or self.index is None:
            return []
        return self.index.following(int(self.ends[-1]), n)


NO_MATCH = Match(0, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, np.zeros(0, np.int64))


class SuffixIndex:
    """Read-only once built. `names[i]` is document i's name (a path, or "" for anonymous text)."""

    def __init__(self, tokens: np.ndarray, positions: np.ndarray, starts: np.ndarray, names: list[str]):
        self._bytes = tokens.astype(">u4").tobytes()
        self.tokens = np.frombuffer(self._bytes, dtype=">u4")  # SEPARATOR, doc 0, SEPARATOR, doc 1, ...
        self.positions = positions            # uint32: token positions in sorted order
        self.starts = starts                  # int64: position of each document's separator
        self.names = names
        self._sorted = memoryview(positions)  # indexing a memoryview gives Python ints, fast
        self._starts = starts.tolist()

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, documents: list, names: list[str] | None = None) -> "SuffixIndex":
        """`documents` are token id sequences (lists or arrays); names default to ""."""
        names = list(names) if names is not None else [""] * len(documents)
        if len(names) != len(documents):
            raise ValueError("one name per document")
        lengths = np.array([len(d) for d in documents], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        total = int(lengths.sum() + len(documents))
        if total >= SEPARATOR:
            raise ValueError(f"{total} tokens: an index holds fewer than 2**32")
        tokens = np.full(total + 1, SEPARATOR, dtype=np.uint32)  # one trailing separator
        for start, doc in zip(starts, documents):
            if len(doc):
                tokens[start + 1:start + 1 + len(doc)] = doc
        positions = sort_positions(tokens)
        return cls(tokens, positions, starts, names)

    # ---- queries -------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return len(self.positions)

    @property
    def nbytes(self) -> int:
        return len(self._bytes) + self.positions.nbytes + self.starts.nbytes

    def document(self, i: int) -> list[int]:
        """Document i's token ids."""
        end = int(self.starts[i + 1]) if i + 1 < len(self.starts) else len(self.tokens) - 1
        return self.tokens[int(self.starts[i]) + 1:end].astype(np.int64).tolist()

    def document_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, positions, side="right") - 1

    def longest_match(self, history, exclude: frozenset[int] = frozenset(), at_most: int = MAX_MATCH,
                      previous: "int | Match | None" = None) -> Match:
        """The longest tail of `history` (token ids) with an occurrence that a token follows,
        outside the documents in `exclude`. `previous`: the match for the history without its last
        token (generation appends one token a step), or its length: it bounds this one and the tail
        one token longer than it is tried first, among its occurrences when it is a match of this index."""
        n = min(len(history), at_most, MAX_MATCH)
        if n <= 0 or not len(self.positions):
            return NO_MATCH
        pattern = struct.pack(f">{n}I", *history[len(history) - n:])
        length = previous.length if isinstance(previous, Match) else previous
        high = n if length is None else min(n, length + 1)
        best = None
        if length is not None and high >= 1:
            lo, hi = 0, len(self._sorted)
            if isinstance(previous, Match) and previous.index is self and previous.span and high == length + 1:
                lo, hi = previous.span  # the longer tail's occurrences are among the shorter one's
            best = self._live_range(pattern, high, exclude, lo, hi)
            if best is not None:
                return self._match(high, *best)
            high -= 1
        low = 0      # a tail of `low` tokens is known to occur (0 trivially)
        while low < high:
            mid = (low + high + 1) // 2
            found = self._live_range(pattern, mid, exclude)
            if found is None:
                high = mid - 1
            else:
                low, best = mid, found
        return self._match(low, *best) if low else NO_MATCH

    def documents_holding(self, ids) -> set[int]:
        """The documents in which the token sequence `ids` (at most MAX_MATCH tokens) occurs."""
        ids = [int(t) for t in ids][:MAX_MATCH]
        if not ids or not len(self.positions):
            return set()
        lo, hi = self._range(np.asarray(ids, dtype=">u4").tobytes(), len(ids))
        return set(self.document_of(self.positions[lo:hi].astype(np.int64)).tolist())

    def following(self, end: int, n: int) -> list[int]:
        """Up to `n` tokens from position `end` on, stopping at the end of the document."""
        run = self.tokens[end:end + n].astype(np.int64)
        stop = np.flatnonzero(run == SEPARATOR)
        return run[:stop[0] if len(stop) else len(run)].tolist()

    def _range(self, pattern: bytes, length: int, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
        """The sorted positions [lo, hi) whose first `length` tokens equal the pattern's last ones,
        searched within [lo, hi)."""
        target, size, data = pattern[-4 * length:], 4 * length, self._bytes
        hi = len(self._sorted) if hi is None else hi

        def key(p: int) -> bytes:
            return data[4 * p:4 * p + size]

        lo = bisect_left(self._sorted, target, lo, hi, key=key)
        if lo == hi or key(self._sorted[lo]) != target:
            return lo, lo
        return lo, bisect_right(self._sorted, target, lo, hi, key=key)

    def _live_range(self, pattern: bytes, length: int, exclude: frozenset[int], lo: int = 0, hi: int | None = None):
        """(occurrence ends, the tokens there, estimated live count, span) when the tail of `length`
        tokens occurs with a next token, outside `exclude`; else None. `span`: the tail's run of
        sorted positions (all its occurrences, live or not)."""
        lo, hi = self._range(pattern, length, lo, hi)
        if lo == hi:
            return None
        if hi - lo <= FEW:
            ends, following = [], []
            for start in self._sorted[lo:hi]:
                token = TOKEN.unpack_from(self._bytes, 4 * (start + length))[0]
                if token != SEPARATOR and not (exclude and self._document(start) in exclude):
                    ends.append(start + length)
                    following.append(token)
            return (ends, following, len(ends), (lo, hi)) if ends else None
        step = max(1, (hi - lo) // SAMPLE)
        starts = self.positions[lo:hi:step].astype(np.int64)
        ends = starts + length
        live = self.tokens[ends] != SEPARATOR
        if exclude:
            live &= ~np.isin(self.document_of(starts), list(exclude))
        if not live.any():
            if step == 1:
                return None
            # A sample can miss the few live ones of a range that excluded documents fill: read all.
            starts = self.positions[lo:hi].astype(np.int64)
            ends = starts + length
            live = self.tokens[ends] != SEPARATOR
            if exclude:
                live &= ~np.isin(self.document_of(starts), list(exclude))
            if not live.any():
                return None
            step = 1
        ends = ends[live]
        return ends, self.tokens[ends].astype(np.int64), len(ends) * step, (lo, hi)

    def _document(self, position: int) -> int:
        return bisect_right(self._starts, position) - 1

    def _match(self, length: int, ends, following, occurrences: int, span: tuple[int, int]) -> Match:
        if isinstance(following, list):  # a few occurrences, read in Python
            counts: dict[int, int] = {}
            for token in following:
                counts[token] = counts.get(token, 0) + 1
            ids = sorted(counts)
            return Match(length, np.array(ids, np.int64), np.array([counts[i] for i in ids], np.int64),
                         occurrences, np.array(ends, np.int64), self, span)
        ids, counts = np.unique(following, return_counts=True)
        return Match(length, ids, counts, occurrences, ends, self, span)

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path, tokenizer_fingerprint: str = "", extra: dict | None = None) -> None:
        from safetensors.numpy import save_file

        header = {"format": FORMAT, "tokenizer": tokenizer_fingerprint, "max_match": MAX_MATCH,
                  "names": self.names, **(extra or {})}
        save_file({"tokens": self.tokens.astype(np.uint32), "positions": self.positions,
                   "starts": self.starts}, str(path), metadata={"index": json.dumps(header)})

    @staticmethod
    def read_header(path: str | Path) -> dict:
        """The JSON header of an index file, without reading its arrays; IndexFormatError if not ours."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                header = json.loads((f.metadata() or {}).get("index", "null"))
        except (OSError, ValueError, SafetensorError) as e:
            raise IndexFormatError(f"{path}: not a code-assistant index ({e})") from e
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise IndexFormatError(f"{path}: index format {found!r}, this version reads {FORMAT!r}")
        return header

    @classmethod
    def load(cls, path: str | Path, tokenizer_fingerprint: str | None = None) -> tuple["SuffixIndex", dict]:
        """The index and its header; IndexFormatError for a file of another format or tokenizer."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        header = cls.read_header(path)
        try:
            arrays = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as e:
            raise IndexFormatError(f"{path}: not a code-assistant index ({e})") from e
        if header.get("max_match") != MAX_MATCH:
            raise IndexFormatError(f"{path}: sorted by {header.get('max_match')} tokens, not {MAX_MATCH}; rebuild it")
        if tokenizer_fingerprint is not None and header.get("tokenizer") != tokenizer_fingerprint:
            raise IndexFormatError(f"{path}: built with another tokenizer; rebuild it with this model")
        return cls(arrays["tokens"], arrays["positions"].astype(np.uint32), arrays["starts"].astype(np.int64),
                   list(header["names"])), header


def sort_positions(tokens: np.ndarray, depth: int = MAX_MATCH) -> np.ndarray:
    """Positions of `tokens` that are not separators, sorted by the `depth` tokens starting there
    (past the end sorts first, like a shorter string), equal ones by position. Prefix doubling:
    after the round for k, the rank of i orders tokens[i:i+2k]. The first rank orders windows of as
    many tokens as fit one int64 key together (a power of two: 4 for up to ~55,000 distinct ids), so
    a prompt's index takes two rounds fewer than from single tokens."""
    n = len(tokens)
    if n == 0:
        return np.zeros(0, np.uint32)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64)
    distinct = int(rank.max()) + 1
    k = 1
    while 2 * k <= depth and (distinct + 1) ** (2 * k) < 2**63:
        k *= 2
    key = rank.copy()            # window tokens after the first count rank + 1, 0 past the end
    for j in range(1, k):
        key *= distinct + 1
        if j < n:
            key[:n - j] += rank[j:] + 1
    order = np.argsort(key, kind="stable")
    if k > 1:
        ordered = key[order]
        rank = np.empty(n, np.int64)
        rank[order] = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
        distinct = int(rank.max()) + 1
    while k < depth and distinct < n:
        shifted = np.zeros(n, np.int64)           # 0: past the end
        shifted[:n - k] = rank[k:] + 1
        key = rank * (distinct + 1) + shifted
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        new_rank = np.empty(n, np.int64)
        new_rank[order] = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
        rank, distinct, k = new_rank, int(new_rank.max()) + 1, 2 * k
    return order[tokens[order] != SEPARATOR].astype(np.uint32)
