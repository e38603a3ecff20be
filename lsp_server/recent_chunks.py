"""A ring of recently edited and visited chunks of code (llama.vim keeps 16 chunks of 64 lines): context
from where the user has just been, for files that are no longer open or parts of a big file far from
the cursor.

Updates are queued as they happen (a didChange, a request's cursor) and cut into chunks later, when
the user pauses (`flush`, from a background task): no keystroke pays for them. Flushing also warms
the snippet index (`context._windows`) for the new chunks, so the next request finds them scored.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .context import WINDOW_LINES, _windows

RING_CHUNKS = 16
CHUNK_LINES = 64
SIMILARITY_LIMIT = 0.9   # a new chunk this similar to one in the ring replaces it (llama.vim: 0.9)
MAX_PENDING = 64


@dataclass(frozen=True)
class Chunk:
    uri: str
    path: str          # as shown in the prompt
    first_line: int
    text: str


def line_similarity(a: str, b: str) -> float:
    lines_a, lines_b = set(a.splitlines()), set(b.splitlines())
    if not lines_a and not lines_b:
        return 1.0
    return len(lines_a & lines_b) / len(lines_a | lines_b)


def chunk_around(text: str, line: int, size: int = CHUNK_LINES) -> tuple[int, str]:
    lines = text.splitlines(keepends=True)
    start = max(0, min(line - size // 2, len(lines) - size))
    return start, "".join(lines[start:start + size])


class RecentChunks:
    def __init__(self, capacity: int = RING_CHUNKS):
        self.capacity = capacity
        self.ring: deque[Chunk] = deque()
        self._pending: dict[tuple[str, int], tuple[str, str, int]] = {}  # (uri, bucket) -> (path, text, line)

    def touch(self, uri: str, path: str, text: str, line: int) -> None:
        """The user edited or visited `line` of `text`; cut into the ring at the next flush."""
        bucket = line // (CHUNK_LINES // 2)  # nearby touches make one chunk
        self._pending.pop((uri, bucket), None)
        self._pending[(uri, bucket)] = (path, text, line)
        while len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))

    def forget(self, uri: str) -> None:
        self.ring = deque(chunk for chunk in self.ring if chunk.uri != uri)
        for key in [key for key in self._pending if key[0] == uri]:
            del self._pending[key]

    def forget_where(self, excluded) -> None:
        """Drop the chunks and queued touches of every document `excluded(uri)` names."""
        self.ring = deque(chunk for chunk in self.ring if not excluded(chunk.uri))
        for key in [key for key in self._pending if excluded(key[0])]:
            del self._pending[key]

    def flush(self) -> int:
        """Cut the queued touches into chunks; returns how many entered the ring."""
        added = 0
        pending, self._pending = self._pending, {}
        for (uri, _), (path, text, line) in pending.items():
            first, chunk_text = chunk_around(text, line)
            if not chunk_text.strip():
                continue
            self.ring = deque(c for c in self.ring if line_similarity(c.text, chunk_text) < SIMILARITY_LIMIT)
            self.ring.append(Chunk(uri, path, first, chunk_text))
            while len(self.ring) > self.capacity:
                self.ring.popleft()
            _windows(chunk_text, WINDOW_LINES)  # warm the snippet index
            added += 1
        return added

    def documents(self, current_uri: str, cursor_line: int,
                  allowed=lambda uri: True) -> list[tuple[str, str]]:
        """(label, text) of the chunks of `allowed` documents as neighbour documents, newest first;
        chunks of the current document only when they are away from the cursor (the prompt already
        holds what is near)."""
        out = []
        for chunk in reversed(self.ring):
            if not allowed(chunk.uri):
                continue
            if chunk.uri == current_uri and abs(chunk.first_line + CHUNK_LINES // 2 - cursor_line) < CHUNK_LINES:
                continue
            last = chunk.first_line + chunk.text.count("\n")
            out.append((f"{chunk.path} (lines {chunk.first_line + 1}-{last})", chunk.text))
        return out
