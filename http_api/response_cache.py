"""Cache of finished completions for deterministic (temperature 0) requests.

In memory (LRU) by default; with a Redis URL the cache is shared by every replica. A cache that
fails (Redis down) is a miss, never an error: the engine can always answer.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("code_assistant.http")


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict | None: ...
    async def put(self, key: str, value: dict) -> None: ...
    async def close(self) -> None: ...


def cache_key(model: str, version: str, request: dict) -> str:
    blob = json.dumps({"model": model, "version": version, **request}, sort_keys=True, ensure_ascii=False, default=str)
    return "code-assistant:completion:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


class MemoryCache:
    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict] = OrderedDict()

    async def get(self, key: str) -> dict | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: dict) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    def __init__(self, url: str, ttl_s: int = 3600):
        import redis.asyncio as redis

        self.ttl_s = ttl_s
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def get(self, key: str) -> dict | None:
        try:
            raw = await self._client.get(key)
        except Exception as e:  # noqa: BLE001 - any Redis failure degrades to a miss
            log.warning(json.dumps({"event": "response_cache_error", "op": "get", "error": type(e).__name__}))
            return None
        return json.loads(raw) if raw else None

    async def put(self, key: str, value: dict) -> None:
        try:
            await self._client.set(key, json.dumps(value), ex=self.ttl_s)
        except Exception as e:  # noqa: BLE001
            log.warning(json.dumps({"event": "response_cache_error", "op": "put", "error": type(e).__name__}))

    async def close(self) -> None:
        await self._client.aclose()


def make_response_cache(redis_url: str | None, max_entries: int, ttl_s: int) -> ResponseCache | None:
    if redis_url:
        return RedisCache(redis_url, ttl_s)
    return MemoryCache(max_entries) if max_entries > 0 else None
