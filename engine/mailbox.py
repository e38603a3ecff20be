"""Chunks from the scheduler thread to the event loops that stream them, with few wake-ups.

`call_soon_threadsafe` per chunk wrote to the loop's self-pipe for every token of every stream,
and after each write the scheduler thread waited to take the GIL back from the event loop: at 25
requests/s that was a sixth of the scheduler's time. Here the scheduler thread appends to the
stream's mailbox and wakes a reader only when one waits, and every reader of one loop that a step
woke is woken by one call (`LoopWaker`): one self-pipe write a step, not one a stream. A reader
takes everything that came meanwhile as one chunk (the texts joined: a stream's consumer sees the
same text in fewer pieces when it falls behind, each token alone when it keeps up).
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref

from .request import Chunk


class LoopWaker:
    """Wakes waiting readers on one event loop: the first wake-up since the loop last ran them
    schedules the call, the others join it."""

    _of: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._waiters: list[asyncio.Future] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "LoopWaker":
        """The loop's waker (made on the loop's own thread: the first mailbox of the loop asks)."""
        waker = cls._of.get(loop)
        if waker is None:
            waker = cls._of[loop] = cls(loop)
        return waker

    def wake(self, waiter: asyncio.Future) -> None:
        with self._lock:
            self._waiters.append(waiter)
            if len(self._waiters) > 1:
                return  # a call is already on its way
        self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a reader cancelled meanwhile
                waiter.set_result(None)


class ChunkMailbox:
    """One stream's chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.waker = loop, LoopWaker.of(loop)
        self._chunks: list[Chunk] = []
        self._waiter: asyncio.Future | None = None
        self._lock = threading.Lock()

    def put(self, chunk: Chunk) -> None:
        """From any thread."""
        with self._lock:
            self._chunks.append(chunk)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self.waker.wake(waiter)

    async def take(self) -> Chunk:
        """On the loop: every chunk put since the last take, merged (waits for one if none)."""
        while True:
            with self._lock:
                chunks, self._chunks = self._chunks, []
                if not chunks:
                    self._waiter = waiter = self.loop.create_future()
            if chunks:
                return merge(chunks)
            await waiter


def merge(chunks: list[Chunk]) -> Chunk:
    """Consecutive chunks of one stream as one: their text, the last one's counts and reason."""
    if len(chunks) == 1:
        return chunks[0]
    return dataclasses.replace(chunks[-1], text="".join(c.text for c in chunks))
