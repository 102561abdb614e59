"""Key-value stores for cached Gerrit answers, on aiocache: process memory (default) or a shared Redis.

Keys look like ``groups|a=1000000|``: a kind, then ``tag=value|`` pairs, so that invalidation can drop every key
carrying one tag (``|a=1000000|``) on either backend. Redis failures are contained here: a broken Redis reads
as a miss and a failed write is dropped, so an outage degrades to Gerrit lookups, never to a crash or an allow.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiocache import RedisCache, SimpleMemoryCache

__all__ = ["MemoryStore", "RedisStore", "Store", "make_store"]

log = logging.getLogger("gerrit_authz.cache")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class Store(Protocol):
    """Where entries live. Values are what the cache layer hands in (JSON-able for Redis)."""

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl: float) -> None: ...

    async def delete_tagged(self, tag: str) -> int:
        """Drop every key containing ``|tag|`` (or starting with ``tag|`` for a kind); returns the count."""
        ...

    async def clear(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Per-process store; values are kept as Python objects (no serialisation on the hot path)."""

    def __init__(self) -> None:
        # timeout=0: no asyncio.wait_for around dict operations (it would cost a task per lookup).
        self._cache = SimpleMemoryCache(timeout=0)
        self.encodes = False

    async def get(self, key: str) -> Any | None:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        await self._cache.set(key, value, ttl=ttl)

    async def delete_tagged(self, tag: str) -> int:
        keys = [k for k in list(self._cache._cache) if f"|{tag}|" in k or k.startswith(f"{tag}|")]
        for key in keys:
            await self._cache.delete(key)
        return len(keys)

    async def clear(self) -> None:
        await self._cache.clear()

    async def close(self) -> None:
        await self._cache.close()

    def __len__(self) -> int:
        return len(self._cache._cache)


class RedisStore:
    """Shared store for replicas. Values are JSON (never pickles: a shared store is no place for code)."""

    def __init__(self, url: str, namespace: str = "gerrit-authz:", *, op_timeout: float = 0.25) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("redis_url must start with redis:// or rediss://")
        db = int(parts.path.lstrip("/") or 0)
        self._ns = namespace
        self._cache = RedisCache(
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            password=parts.password,
            ssl=parts.scheme == "rediss",
            namespace=namespace,
            timeout=op_timeout,
            create_connection_timeout=op_timeout,
        )
        self.encodes = True

    async def get(self, key: str) -> Any | None:
        try:
            raw = await self._cache.get(key)
        except Exception as exc:
            log.warning("redis get failed, treating as a miss: %s", type(exc).__name__)
            return None
        return None if raw is None else json.loads(raw)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        try:
            await self._cache.set(key, json.dumps(value, separators=(",", ":")), ttl=ttl)
        except Exception as exc:
            log.warning("redis set failed, answer not cached: %s", type(exc).__name__)

    async def delete_tagged(self, tag: str) -> int:
        escaped = _GLOB_SPECIAL.sub(r"\\\1", tag)
        client = self._cache.client
        removed = 0
        for pattern in (f"{self._ns}*|{escaped}|*", f"{self._ns}{escaped}|*"):
            async for key in client.scan_iter(match=pattern, count=500):
                removed += int(await client.delete(key))
        return removed

    async def clear(self) -> None:
        await self._cache.clear()

    async def close(self) -> None:
        await self._cache.close()


def make_store(backend: str, *, redis_url: str | None = None, namespace: str = "gerrit-authz:") -> Store:
    """The configured store."""
    if backend == "redis":
        assert redis_url is not None
        return RedisStore(redis_url, namespace)
    return MemoryStore()
