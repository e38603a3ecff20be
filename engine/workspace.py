"""The token index of a user's repository (`WorkspaceIndex`), kept current as files change.

Which files enter it is decided above the engine (project_files/: the walk and the one exclusion
owner); the engine receives the index through `Engine.use_workspace` and only queries it.

The index is a base suffix array over every file at the last full build, plus a small overlay
suffix array over the files changed since; a changed file's base entries are masked, so a change
re-sorts only the overlay (milliseconds), and the base is rebuilt in the background once the
overlay grows past a share of it. Queries read one immutable snapshot, so they never wait for an
update and never see half of one.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .suffix_index import NO_MATCH, IndexFormatError, Match, SuffixIndex

log = logging.getLogger("engine.workspace")

INDEX_FORMAT_KEY = "workspace"
# A file holding the 24 tokens before the cursor and the 12 after it is the edited document's copy.
STALE_PREFIX_TOKENS, STALE_SUFFIX_TOKENS = 24, 12


def tokenizer_fingerprint(tokenizer) -> str:
    """Names the token vocabulary, so an index file built for another model is refused."""
    digest = hashlib.sha256(str(tokenizer.n_vocab).encode())
    for i in range(tokenizer.n_vocab):
        if i in tokenizer.special_ids:
            continue
        try:
            digest.update(tokenizer.decode_bytes([i]) + b"\x00")
        except Exception:  # ids a tokenizer reserves without bytes
            digest.update(b"?\x00")
    return digest.hexdigest()[:16]


# ---- the index ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Snapshot:
    base: SuffixIndex
    base_ids: dict[str, int]           # path -> document id in base
    masked: frozenset[int]             # base documents superseded by the overlay or deleted
    overlay: SuffixIndex
    overlay_ids: dict[str, int]

    def n_tokens(self) -> int:
        live = self.base.n_tokens - sum(_doc_length(self.base, i) for i in self.masked)
        return live + self.overlay.n_tokens

    @functools.cached_property
    def by_file_name(self) -> dict[str, list[str]]:
        """Live paths by their last component: a relative path is looked up without a scan."""
        names: dict[str, list[str]] = {}
        live = [p for p, i in self.base_ids.items() if i not in self.masked] + list(self.overlay_ids)
        for path in live:
            names.setdefault(os.path.basename(path), []).append(path)
        return names


def _doc_length(index: SuffixIndex, doc: int) -> int:
    end = index.starts[doc + 1] if doc + 1 < len(index.starts) else len(index.tokens) - 1
    return int(end - index.starts[doc] - 1)


EMPTY = SuffixIndex.build([])


class WorkspaceIndex:
    """The token index of a set of files, keyed by path. `tokenize` maps a text to token ids;
    `fingerprint` names the vocabulary (an index file built for another model is refused)."""

    def __init__(self, tokenize: Callable[[str], list[int]], fingerprint: str = "", overlay_share: float = 0.1):
        self.tokenize = tokenize
        self.fingerprint = fingerprint
        # The overlay of changed files is merged into a rebuilt base once it holds this share of the base.
        self.overlay_share = overlay_share
        self._snapshot = _Snapshot(EMPTY, {}, frozenset(), EMPTY, {})
        self._overlay_docs: dict[str, np.ndarray | None] = {}  # None: deleted
        self._lock = threading.Lock()        # one writer at a time; readers take the snapshot
        self._rebuilding = False
        self.version = 0                     # grows with every change: answers cached before are stale
        self.build_seconds = 0.0
        self.ready = threading.Event()

    # ---- reading ---------------------------------------------------------------------------
    def longest_match(self, history, exclude_paths: Iterable[str] = (), previous: int | Match | None = None) -> Match:
        """The longest match over the whole workspace but the files in `exclude_paths` (the document
        being edited: its live text is the request's own context)."""
        snap = self._snapshot
        excluded = [str(p) for p in exclude_paths]
        masked = snap.masked | {snap.base_ids[p] for p in excluded if p in snap.base_ids}
        base = snap.base.longest_match(history, masked, previous=previous) if snap.base.n_tokens else NO_MATCH
        overlay = NO_MATCH
        if snap.overlay.n_tokens:
            overlay = snap.overlay.longest_match(
                history, frozenset(snap.overlay_ids[p] for p in excluded if p in snap.overlay_ids), previous=previous)
        if overlay.length > base.length:
            return overlay
        if overlay.length == base.length and overlay.found:
            return _pooled(base, overlay)
        return base

    def stale_copies(self, prefix_ids: list[int], suffix_ids: list[int], path: str | None = None) -> list[str]:
        """The indexed copies of the document being edited: the file at `path` (absolute, or
        relative to a root as editors show it: any indexed file ending so), and any file holding
        both the last tokens before the cursor and the first ones after it (a request that names
        no path, or a copy of the file under another name)."""
        excluded = self._named(path) if path else []
        if len(prefix_ids) >= STALE_PREFIX_TOKENS and len(suffix_ids) >= STALE_SUFFIX_TOKENS:
            before = set(self.containing(prefix_ids[-STALE_PREFIX_TOKENS:]))
            if before:
                excluded += sorted(before & set(self.containing(suffix_ids[:STALE_SUFFIX_TOKENS])))
        return excluded

    def containing(self, ids: list[int]) -> list[str]:
        """Paths of the live files that hold the token sequence `ids` (at most MAX_MATCH tokens)."""
        snap = self._snapshot
        found = set()
        for index, masked in ((snap.base, snap.masked), (snap.overlay, frozenset())):
            for doc in index.documents_holding(ids):
                if doc not in masked:
                    found.add(index.names[doc])
        return sorted(found)

    def files(self) -> list[str]:
        snap = self._snapshot
        live = [p for p, i in snap.base_ids.items() if i not in snap.masked]
        return sorted(set(live) | set(snap.overlay_ids))

    def contains(self, path: str | Path) -> bool:
        key = self._key(path)
        snap = self._snapshot
        return key in snap.overlay_ids or (key in snap.base_ids and snap.base_ids[key] not in snap.masked)

    @property
    def n_tokens(self) -> int:
        return self._snapshot.n_tokens()

    @property
    def nbytes(self) -> int:
        snap = self._snapshot
        return snap.base.nbytes + snap.overlay.nbytes


    # ---- building --------------------------------------------------------------------------
    def build(self, documents: Iterable[tuple[str, str]]) -> None:
        """Index every (path, text) of `documents` in place of what was there (blocking: call it
        from a background thread)."""
        started = time.perf_counter()
        names, docs = [], []
        for path, text in documents:
            names.append(self._key(path))
            docs.append(np.asarray(self.tokenize(text), dtype=np.uint32))
        base = SuffixIndex.build(docs, names)
        with self._lock:
            self._overlay_docs.clear()
            self._snapshot = _Snapshot(base, {n: i for i, n in enumerate(names)}, frozenset(), EMPTY, {})
            self.version += 1
        self.build_seconds = time.perf_counter() - started
        self.ready.set()
        log.info("workspace indexed: %d files, %d tokens, %.1f s", len(names), base.n_tokens, self.build_seconds)

    def update_file(self, path: str | Path, text: str) -> None:
        """Index `text` as the file at `path` (an editor's live copy, or the file read again)."""
        tokens = np.asarray(self.tokenize(text), dtype=np.uint32)
        with self._lock:
            self._overlay_docs[self._key(path)] = tokens
            self._publish()
        self._maybe_merge()

    def remove_file(self, path: str | Path) -> None:
        key = self._key(path)
        with self._lock:
            snap = self._snapshot
            if key in snap.overlay_ids or (key in snap.base_ids and snap.base_ids[key] not in snap.masked):
                self._overlay_docs[key] = None
                self._publish()

    # ---- files -----------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict) -> None:
        """The current index, merged, as one file; `metadata` (JSON) is kept in its header."""
        base, names = self._merged()
        base.save(path, self.fingerprint, {INDEX_FORMAT_KEY: metadata})

    @classmethod
    def load(cls, path: str | Path, tokenize: Callable[[str], list[int]],
             fingerprint: str | None = None) -> tuple["WorkspaceIndex", dict]:
        """The index `save` wrote and its metadata."""
        base, header = SuffixIndex.load(path, fingerprint)
        metadata = header.get(INDEX_FORMAT_KEY)
        if not isinstance(metadata, dict):
            raise IndexFormatError(f"{path}: not a workspace index")
        index = cls(tokenize, fingerprint or header.get("tokenizer", ""))
        index._snapshot = _Snapshot(base, {n: i for i, n in enumerate(base.names)}, frozenset(), EMPTY, {})
        index.ready.set()
        return index, metadata

    # ---- internals -------------------------------------------------------------------------
    def _key(self, path: str | Path) -> str:
        return str(Path(path).resolve())

    def _named(self, path: str) -> list[str]:
        if os.path.isabs(path):
            return [self._key(path)]
        tail = os.sep + os.path.normpath(path).lstrip(os.sep)
        candidates = self._snapshot.by_file_name.get(os.path.basename(tail), [])
        return [name for name in candidates if name.endswith(tail)]

    def _publish(self) -> None:
        """A new snapshot with the overlay re-sorted (under self._lock)."""
        snap = self._snapshot
        live = {k: v for k, v in self._overlay_docs.items() if v is not None}
        names = sorted(live)
        overlay = SuffixIndex.build([live[n] for n in names], names) if names else EMPTY
        masked = frozenset(snap.base_ids[k] for k in self._overlay_docs if k in snap.base_ids)
        self._snapshot = _Snapshot(snap.base, snap.base_ids, masked, overlay, {n: i for i, n in enumerate(names)})
        self.version += 1

    def _merged(self) -> tuple[SuffixIndex, list[str]]:
        with self._lock:
            snap = self._snapshot
            overlay_docs = dict(self._overlay_docs)
        docs: dict[str, np.ndarray] = {}
        for name, i in snap.base_ids.items():
            if i not in snap.masked:
                start = snap.base.starts[i] + 1
                docs[name] = np.asarray(snap.base.tokens[start:start + _doc_length(snap.base, i)], dtype=np.uint32)
        docs.update({k: v for k, v in overlay_docs.items() if v is not None})
        names = sorted(docs)
        return SuffixIndex.build([docs[n] for n in names], names), names

    def _maybe_merge(self) -> None:
        snap = self._snapshot
        if self._rebuilding or snap.overlay.n_tokens <= max(50_000, self.overlay_share * snap.base.n_tokens):
            return
        self._rebuilding = True
        threading.Thread(target=self._merge, name="workspace-merge", daemon=True).start()

    def _merge(self) -> None:
        try:
            with self._lock:
                pending = dict(self._overlay_docs)
            base, names = self._merged()
            with self._lock:
                # Changes that arrived while merging stay in the overlay.
                for key, tokens in pending.items():
                    if self._overlay_docs.get(key, "gone") is tokens:
                        del self._overlay_docs[key]
                base_ids = {n: i for i, n in enumerate(names)}
                self._snapshot = _Snapshot(base, base_ids, frozenset(), EMPTY, {})
                self._publish()
        finally:
            self._rebuilding = False


def _pooled(a: Match, b: Match) -> Match:
    ids, inverse = np.unique(np.concatenate([a.ids, b.ids]), return_inverse=True)
    counts = np.zeros(len(ids), np.int64)
    np.add.at(counts, inverse, np.concatenate([a.counts, b.counts]))
    return Match(a.length, ids, counts, a.occurrences + b.occurrences, a.ends, a.index)
