"""engine/mailbox.py: chunks from the scheduler thread reach the event loop whole, in order, merged
when the reader falls behind, with one wake-up for what came meanwhile."""
from __future__ import annotations

import asyncio
import threading

from engine.mailbox import ChunkMailbox
from engine.request import Chunk


def test_a_reader_that_keeps_up_gets_each_chunk_and_one_that_falls_behind_gets_them_merged():
    async def main():
        box = ChunkMailbox(asyncio.get_running_loop())
        box.put(Chunk("a", 1))
        assert await box.take() == Chunk("a", 1)
        for i, text in enumerate(["b", "c", "d"], start=2):
            box.put(Chunk(text, i))
        box.put(Chunk("", 4, "stop"))
        assert await box.take() == Chunk("bcd", 4, "stop")

    asyncio.run(main())


def test_chunks_from_another_thread_arrive_in_order_and_wake_the_reader():
    async def main():
        loop = asyncio.get_running_loop()
        box = ChunkMailbox(loop)
        wakes = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(1), real(*a))[1]

        def produce():
            for i in range(1, 2001):
                box.put(Chunk(str(i % 10), i, "length" if i == 2000 else None))

        threading.Thread(target=produce).start()
        text, last = "", None
        while last is None or not last.finish_reason:
            last = await box.take()
            text += last.text
        assert text == "".join(str(i % 10) for i in range(1, 2001)) and last.tokens == 2000
        assert len(wakes) <= 2000

    asyncio.run(main())


def test_a_reader_cancelled_while_waiting_leaves_the_mailbox_working():
    async def main():
        box = ChunkMailbox(asyncio.get_running_loop())
        waiting = asyncio.ensure_future(box.take())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.sleep(0)
        threading.Thread(target=box.put, args=(Chunk("x", 1),)).start()
        assert await asyncio.wait_for(box.take(), 5) == Chunk("x", 1)

    asyncio.run(main())


def test_readers_of_one_loop_woken_together_cost_one_wake_up():
    async def main():
        loop = asyncio.get_running_loop()
        boxes = [ChunkMailbox(loop) for _ in range(16)]
        readers = [asyncio.ensure_future(box.take()) for box in boxes]
        await asyncio.sleep(0)  # every reader waits
        calls = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (calls.append(1), real(*a))[1]

        def one_step():  # the scheduler thread: a chunk for every stream of the batch
            for i, box in enumerate(boxes):
                box.put(Chunk(str(i), 1))

        thread = threading.Thread(target=one_step)
        thread.start()
        thread.join()
        assert [r.text for r in await asyncio.gather(*readers)] == [str(i) for i in range(16)]
        assert len(calls) == 1

    asyncio.run(main())
