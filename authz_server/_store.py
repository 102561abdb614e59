"""Where cached Gerrit answers and their generations live: process memory (default) or a shared Redis.

A store holds :class:`Entry` values under opaque keys and the generation table of :mod:`._generations`. Reading an
entry also says whether it is *current* (none of its scopes bumped since its lookup started) and hands out the
snapshot a lookup starting now must record; with Redis that is one round trip (a Lua script reads the table and
the entry together), so every replica sees a bump before its next read.

Nothing is ever searched: invalidation bumps generations, and entries that are no longer current simply miss
until the LRU (memory) or their TTL (Redis) reclaims them. Redis failures are contained here: a broken Redis
reads as a miss whose snapshot is never current (so nothing fetched meanwhile is served from the store later),
a failed write is dropped, and a bump that fails raises :class:`Unavailable` (Invalidate must not pretend).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._generations import Generations, Snapshot, new_epoch, process_generations
from ._redis_conn import RedisConnection, redis_cache_options
from .errors import Unavailable

__all__ = ["Entry", "MemoryStore", "RedisStore", "Store", "holds", "make_store"]

log = logging.getLogger("gerrit_authz.cache")

_NEVER = Snapshot("", -1)  # a snapshot no table ever matches


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer: its payload, until when it is fresh and may stand in during an outage, the snapshot its
    lookup started under, and the generation slots of the scopes it depends on."""

    payload: Any
    fresh_until: float
    stale_until: float
    snapshot: Snapshot
    buckets: tuple[int, ...]


class Store(Protocol):
    """Entries and the generation table they are checked against."""

    #: Whether payloads must be JSON-able (Redis) rather than kept as Python objects (memory).
    encodes: bool

    async def read(self, key: str) -> tuple[Entry | None, bool, Snapshot]:
        """The entry under ``key`` (or None), whether it is current, and the snapshot of a lookup starting now."""
        ...

    async def write(self, key: str, entry: Entry, ttl: float) -> None:
        """Keep ``entry`` for ``ttl`` seconds (dropped, not raised, when the store fails)."""
        ...

    async def snapshot(self) -> Snapshot: ...

    async def current(self, snapshot: Snapshot, buckets: Sequence[int]) -> bool:
        """Whether none of ``buckets`` was bumped since ``snapshot`` was taken; :class:`Unavailable` when the
        store cannot tell."""
        ...

    async def bump(self, buckets: Sequence[int]) -> None:
        """Make every entry depending on one of ``buckets`` miss; :class:`Unavailable` when that cannot be done."""
        ...

    async def bump_all(self) -> None:
        """Make every entry miss (a new epoch)."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Per-process store: one ordered dict as the LRU (no timer per entry), values kept as Python objects.

    At most ``max_entries`` entries are held, least recently used evicted first. Keys are bounded in length by the
    cache (long parts are digested), so ``max_entries`` bounds the memory whatever the requests.
    """

    encodes = False

    def __init__(
        self,
        max_entries: int = 100_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        generations: Generations | None = None,
    ) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        # In a worker of server.workers: the table shared by every worker of the host (see _generations).
        self.generations: Generations = generations if generations is not None else process_generations()

    async def read(self, key: str) -> tuple[Entry | None, bool, Snapshot]:
        gens = self.generations
        item = self._entries.get(key)
        if item is None:
            return None, False, gens.snapshot
        entry, expires = item
        if expires <= self._clock():
            del self._entries[key]
            return None, False, gens.snapshot
        self._entries.move_to_end(key)
        return entry, gens.current(entry.snapshot, entry.buckets), gens.snapshot

    async def write(self, key: str, entry: Entry, ttl: float) -> None:
        if not self.generations.current(entry.snapshot, entry.buckets):
            return  # fetched before an invalidation: keep whatever is there (it may be newer)
        entries = self._entries
        entries[key] = (entry, self._clock() + ttl)
        entries.move_to_end(key)
        while len(entries) > self._max:
            entries.popitem(last=False)

    async def snapshot(self) -> Snapshot:
        return self.generations.snapshot

    async def current(self, snapshot: Snapshot, buckets: Sequence[int]) -> bool:
        return self.generations.current(snapshot, buckets)

    async def bump(self, buckets: Sequence[int]) -> None:
        self.generations.bump(buckets)

    async def bump_all(self) -> None:
        self.generations.bump_all()
        # Unreachable now; freeing them is cheap here (one C-level clear), and keeps the memory for live answers.
        self._entries.clear()

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def held(self) -> list[str]:
        """The keys held (for tests and benchmarks)."""
        return list(self._entries)


# KEYS[1]: the generation hash, KEYS[2]: the entry. ARGV[1]: an epoch to start if the table was lost.
# Returns {epoch, clock} and, when the entry exists, the entry and the generations of the slots its header names
# (a missing slot in a live table was never bumped in this epoch: "0").
_READ = """
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  redis.call('HSET', KEYS[1], 'e', ARGV[1])
  e = ARGV[1]
end
local c = redis.call('HGET', KEYS[1], 'c') or '0'
if KEYS[2] == '' then return {e, c} end
local v = redis.call('GET', KEYS[2])
if not v then return {e, c} end
local nl = string.find(v, '\\n', 1, true)
if not nl then return {e, c, v} end
local fields = {}
for f in string.gmatch(string.sub(v, 1, nl - 1), '[^ ,]+') do fields[#fields + 1] = f end
local out = {e, c, v}
local n = #fields - 2
if n > 0 then
  local g = redis.call('HMGET', KEYS[1], unpack(fields, 3))
  for i = 1, n do out[3 + i] = g[i] or '0' end
end
return out
"""

# KEYS[1]: the generation hash. ARGV[1]: an epoch to start if the table was lost; ARGV[2..]: slots to bump.
_BUMP = """
if redis.call('HEXISTS', KEYS[1], 'e') == 0 then redis.call('HSET', KEYS[1], 'e', ARGV[1]) end
local c = redis.call('HINCRBY', KEYS[1], 'c', 1)
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], c) end
return c
"""

# KEYS[1]: the generation hash. ARGV[1]: the new epoch. ARGV[2..]: slots whose generations are wanted.
_CURRENT = """
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return {false} end
if #ARGV < 2 then return {e} end
local g = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local out = {e}
for i = 1, #ARGV - 1 do out[1 + i] = g[i] or '0' end
return out
"""


def _redis_connection(url: str, namespace: str, op_timeout: float, connection: RedisConnection | None) -> Any:
    """The aiocache Redis backend for ``url`` (its ``client`` is the redis-py connection pool we talk through)."""
    # Imported here, not at module level: aiocache has RedisCache only with the `redis` extra installed,
    # and the memory backend must work without it.
    from aiocache.backends.redis import RedisCache

    return RedisCache(
        # Address, TLS and credentials: see _redis_conn.
        **redis_cache_options(url, connection),
        namespace=namespace,
        timeout=op_timeout,
        create_connection_timeout=op_timeout,
    )


def _encode(entry: Entry) -> str:
    s = entry.snapshot
    head = f"{s.epoch} {s.clock} " + ",".join(map(str, entry.buckets))
    return head + "\n" + json.dumps([entry.payload, entry.fresh_until, entry.stale_until], separators=(",", ":"))


def _decode(raw: bytes) -> Entry:
    head, _, body = raw.decode().partition("\n")
    epoch, clock, buckets = [*head.split(" "), "", ""][:3]
    payload, fresh, stale = json.loads(body)
    return Entry(payload, fresh, stale, Snapshot(epoch, int(clock)), tuple(int(b) for b in buckets.split(",") if b))


class RedisStore:
    """Shared store for replicas. Values are JSON (never pickles: a shared store is no place for code); the
    generation table is one hash (``{namespace}gen``) that every replica reads with each entry."""

    encodes = True

    def __init__(
        self,
        url: str,
        namespace: str = "gerrit-authz:",
        *,
        op_timeout: float = 0.25,
        connection: RedisConnection | None = None,
    ) -> None:
        self._backend = _redis_connection(url, namespace, op_timeout, connection)
        self._client = self._backend.client
        self._timeout = op_timeout
        self._gen_key = self._backend.build_key("gen")
        self._read = self._client.register_script(_READ)
        self._bump = self._client.register_script(_BUMP)
        self._current = self._client.register_script(_CURRENT)

    def _key(self, key: str) -> str:
        return str(self._backend.build_key(key))

    async def _call(self, op: Callable[[], Any]) -> Any:
        async with asyncio.timeout(self._timeout):
            return await op()

    async def read(self, key: str) -> tuple[Entry | None, bool, Snapshot]:
        try:
            reply = await self._call(lambda: self._read(keys=[self._gen_key, self._key(key)], args=[new_epoch()]))
            now = Snapshot(reply[0].decode(), int(reply[1]))
            if len(reply) < 3:
                return None, False, now
            entry = _decode(reply[2])
        except Exception as exc:
            log.warning("redis read failed, treating as a miss: %s", type(exc).__name__)
            return None, False, _NEVER
        clock = entry.snapshot.clock
        current = entry.snapshot.epoch == now.epoch and all(int(g) <= clock for g in reply[3:])
        return entry, current, now

    async def write(self, key: str, entry: Entry, ttl: float) -> None:
        if entry.snapshot.epoch == "":
            return
        try:
            await self._call(lambda: self._client.set(self._key(key), _encode(entry), px=max(1, int(ttl * 1000))))
        except Exception as exc:
            log.warning("redis set failed, answer not cached: %s", type(exc).__name__)

    async def snapshot(self) -> Snapshot:
        try:
            reply = await self._call(lambda: self._read(keys=[self._gen_key, ""], args=[new_epoch()]))
        except Exception as exc:
            log.warning("redis read failed: %s", type(exc).__name__)
            return _NEVER
        return Snapshot(reply[0].decode(), int(reply[1]))

    async def current(self, snapshot: Snapshot, buckets: Sequence[int]) -> bool:
        if snapshot.epoch == "":
            return False
        try:
            reply = await self._call(lambda: self._current(keys=[self._gen_key], args=["", *buckets]))
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot be read: {type(exc).__name__}") from None
        if not reply or reply[0] is None or reply[0].decode() != snapshot.epoch:
            return False
        return all(int(g) <= snapshot.clock for g in reply[1:])

    async def bump(self, buckets: Sequence[int]) -> None:
        try:
            await self._call(lambda: self._bump(keys=[self._gen_key], args=[new_epoch(), *buckets]))
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot be updated: {type(exc).__name__}") from None

    async def bump_all(self) -> None:
        # Entries of the old epoch expire on their TTLs; nothing is scanned.
        try:
            await self._call(lambda: self._client.hset(self._gen_key, "e", new_epoch()))
        except Exception as exc:
            raise Unavailable("cache_unavailable", f"Redis cannot be updated: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._backend.close()


async def holds(store: Store, snapshot: Snapshot, buckets: tuple[int, ...]) -> bool:
    """Whether nothing in ``buckets`` was invalidated since ``snapshot``; a store that cannot tell says no."""
    try:
        return await store.current(snapshot, buckets)
    except Unavailable:
        return False


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
