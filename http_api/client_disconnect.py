"""Stop work nobody will read: a non-streamed completion is cancelled when its client hangs up.

(Streamed responses get this from Starlette, which cancels the stream on `http.disconnect`.)
Editors cancel in-flight completions all the time as the user types; without this each cancelled
request would keep a batch slot busy until its last token.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from fastapi import Request

from .errors import APIError

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"; nobody receives it, the log does


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body has been read, so the next message the server delivers is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise APIError(CLIENT_CLOSED, "client closed the request", code="client_closed") from None
        raise
    finally:
        watcher.cancel()
