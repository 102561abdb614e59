"""Key-value stores for cached Gerrit answers, on aiocache: process memory (default) or a shared Redis.

Keys look like ``groups|a=1000000|``: a kind, then ``tag=value|`` pairs, so that invalidation can drop every key
carrying one tag (``|a=1000000|``) on either backend. Redis failures are contained here: a broken Redis reads
as a miss and a failed write is dropped, so an outage degrades to Gerrit lookups, never to a crash or an allow.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from typing import Any, Protocol

from aiocache import SimpleMemoryCache
from aiocache.serializers import StringSerializer

from ._redis_conn import RedisConnection, redis_cache_options
from .errors import Unavailable

__all__ = ["MemoryStore", "RedisStore", "Store", "make_store"]

log = logging.getLogger("gerrit_authz.cache")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class Store(Protocol):
    """Where entries live. Values are what the cache layer hands in (JSON-able for Redis)."""

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl: float) -> None: ...

    async def keys_tagged(self, tag: str) -> list[str]:
        """Every key containing ``|tag|`` (or, for a kind, starting with ``tag|``)."""
        ...

    async def delete_keys(self, keys: list[str]) -> int: ...

    async def delete_tagged(self, tag: str) -> int:
        """Drop every key :meth:`keys_tagged` finds; returns the count."""
        ...

    async def clear(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Per-process store; values are kept as Python objects (no serialisation on the hot path).

    At most ``max_entries`` entries are held, the least recently used evicted first, so that no stream of
    distinct bogus credentials or unknown projects can grow the process without bound.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        # timeout=0: no asyncio.wait_for around dict operations (it would cost a task per lookup).
        self._cache = SimpleMemoryCache(timeout=0)
        self._max = max_entries
        # Recency order. It may also hold keys aiocache has since expired; those leave it as they reach its front,
        # so it is bounded by max_entries too.
        self._order: OrderedDict[str, None] = OrderedDict()
        self.encodes = False

    async def get(self, key: str) -> Any | None:
        # Hot path (every cached fact of every Check): read aiocache's dict directly. SimpleMemoryCache.get
        # adds only its decorator stack (env lookup, timeout, plugins, timing, debug log) around the same
        # dict.get: no namespace, NullSerializer, expiry by call_later deletion. Writes still go through it.
        value = self._cache._cache.get(key)
        if value is not None:
            self._order.move_to_end(key)
        return value

    async def set(self, key: str, value: Any, ttl: float) -> None:
        await self._cache.set(key, value, ttl=ttl)
        self._order[key] = None
        self._order.move_to_end(key)
        while len(self._order) > self._max:
            oldest, _ = self._order.popitem(last=False)
            if oldest in self._cache._cache:
                await self._cache.delete(oldest)

    async def keys_tagged(self, tag: str) -> list[str]:
        return [k for k in list(self._cache._cache) if f"|{tag}|" in k or k.startswith(f"{tag}|")]

    async def delete_keys(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            self._order.pop(key, None)
            removed += int(await self._cache.delete(key))
        return removed

    async def delete_tagged(self, tag: str) -> int:
        return await self.delete_keys(await self.keys_tagged(tag))

    async def clear(self) -> None:
        self._order.clear()
        await self._cache.clear()

    async def close(self) -> None:
        await self._cache.close()

    def __len__(self) -> int:
        return len(self._cache._cache)


class RedisStore:
    """Shared store for replicas. Values are JSON (never pickles: a shared store is no place for code)."""

    def __init__(
        self,
        url: str,
        namespace: str = "gerrit-authz:",
        *,
        op_timeout: float = 0.25,
        connection: RedisConnection | None = None,
    ) -> None:
        self._ns = namespace
        # Imported here, not at module level: aiocache has RedisCache only with the `redis` extra installed,
        # and the memory backend must work without it.
        from aiocache.backends.redis import RedisCache

        self._cache = RedisCache(
            # Address, TLS and credentials: see _redis_conn.
            **redis_cache_options(url, connection),
            namespace=namespace,
            # Values are JSON text already; aiocache's default JsonSerializer would encode them a second time.
            serializer=StringSerializer(),
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

    def _key_glob(self) -> str:
        # aiocache's Redis keys are "{namespace}:{key}" (it adds the ':'); escaped for SCAN MATCH.
        return _GLOB_SPECIAL.sub(r"\\\1", self._cache.build_key(""))

    async def keys_tagged(self, tag: str) -> list[str]:
        escaped = _GLOB_SPECIAL.sub(r"\\\1", tag)
        prefix = self._cache.build_key("")
        glob = self._key_glob()
        keys: list[str] = []
        try:
            for pattern in (f"{glob}*|{escaped}|*", f"{glob}{escaped}|*"):
                async for raw in self._cache.client.scan_iter(match=pattern, count=500):
                    keys.append(raw.decode()[len(prefix) :])
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot be searched: {type(exc).__name__}") from None
        return keys

    async def delete_keys(self, keys: list[str]) -> int:
        if not keys:
            return 0
        try:
            return int(await self._cache.client.delete(*(self._cache.build_key(k) for k in keys)))
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot delete: {type(exc).__name__}") from None

    async def delete_tagged(self, tag: str) -> int:
        return await self.delete_keys(await self.keys_tagged(tag))

    async def clear(self) -> None:
        # Only our namespace: aiocache's clear() without a namespace is FLUSHDB, which would wipe a shared Redis.
        client = self._cache.client
        try:
            async for key in client.scan_iter(match=self._key_glob() + "*", count=500):
                await client.delete(key)
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot be cleared: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._cache.close()


def make_store(
    backend: str,
    *,
    redis_url: str | None = None,
    namespace: str = "gerrit-authz:",
    max_entries: int = 100_000,
    redis_connection: RedisConnection | None = None,
) -> Store:
    """The configured store."""
    if backend == "redis":
        assert redis_url is not None
        return RedisStore(redis_url, namespace, connection=redis_connection)
    return MemoryStore(max_entries)
