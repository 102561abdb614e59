"""RedisStore and CachedGerrit against a real ``redis-server`` (the Debian package), started per module.

Each test works in its own namespace on the shared server; the outage tests start a server of their own to
kill or freeze. Raw keys and values are inspected with redis-py, bypassing aiocache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from _support.redis import RedisServer, redis_binary

from authz_server._accounts import AccountKey
from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._facts import CODECS, AccessResult, Account, ChangeInfo, Fact, Group, LabelVotes
from authz_server._generations import Snapshot
from authz_server._store import Entry, RedisStore
from authz_server.config import TtlConfig
from authz_server.errors import Unavailable

OP_TIMEOUT = 0.2
TTL = TtlConfig(account=300, credentials=300, groups=60, capabilities=60, access=60, change=15, negative=10)
SECRET = b"shared-replica-secret"

ALICE = Account(id=1000001, username="alice", email="alice@example.com", name="Alice")
ALICE_PASSWORD = "alice-Http-Pw-93f1"
CHANGE = ChangeInfo(
    number=4711,
    project="platform/build",
    branch="main",
    status="NEW",
    labels={"Code-Review": LabelVotes(2, -1, False), "Verified": LabelVotes(0, -1, True), "Empty": LabelVotes()},
    submittable=False,
)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures (the module-scoped server is meant to move to tests/conftest.py as a session fixture later)
# ---------------------------------------------------------------------------------------------------------------


def _start_server() -> RedisServer:
    binary = redis_binary()
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it): these tests need the real one")
    return RedisServer(binary).start()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = _start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, to kill or freeze."""
    server = _start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


MakeStore = Callable[..., RedisStore]


@pytest.fixture
async def make_store(redis_server: RedisServer, namespace: str) -> AsyncIterator[MakeStore]:
    stores: list[RedisStore] = []

    def make(url: str | None = None, ns: str | None = None, op_timeout: float = OP_TIMEOUT) -> RedisStore:
        store = RedisStore(url or redis_server.url, ns or namespace, op_timeout=op_timeout)
        stores.append(store)
        return store

    yield make
    for store in stores:
        with contextlib.suppress(Exception):  # a killed or frozen server
            await asyncio.wait_for(store.close(), 2)


async def keys_of(raw: aioredis.Redis, namespace: str) -> list[bytes]:
    return sorted([key async for key in raw.scan_iter(match=f"{namespace}*")])


def decode_json(raw_value: bytes) -> Any:
    """The value as stored: JSON text, encoded once (not a JSON string holding JSON)."""
    value = json.loads(raw_value.decode("utf-8"))
    assert not isinstance(value, str), "value was JSON-encoded twice"
    return value


def budget(seconds: float = 10.0) -> Deadline:
    return Deadline.after(seconds)


def account_key_for(value: str) -> AccountKey:
    return AccountKey("email" if "@" in value else "username", value)


class FakeGerrit:
    """A counting GerritFacts; ``error`` makes it unavailable."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.error: Exception | None = None

    async def _answer(self, kind: str, value: Any) -> Fact[Any]:
        self.calls[kind] += 1
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return Fact(value)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        query = key.value
        return await self._answer("account", ALICE if query in ("alice", "alice@example.com", "1000001") else None)

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        ok = (username, password) == ("alice", ALICE_PASSWORD)
        return await self._answer("credentials", ALICE if ok else None)

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        groups = (Group("global:Registered-Users", "Registered Users"), Group("a1b2" * 10, "Devs"))
        return await self._answer("groups", groups if account_id == ALICE.id else ())

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        if (project, account_id, ref, perm) == ("platform/build", ALICE.id, "refs/heads/main", "read"):
            return await self._answer("access", AccessResult(True))
        return await self._answer("access", AccessResult(False, f"cannot {perm} on {ref} of {project}"))

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        caps = frozenset({"createProject", "viewAccess"}) if account_id == ALICE.id else frozenset()
        return await self._answer("capabilities", caps)

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        return await self._answer("change", CHANGE if change_id == "4711" else None)


def replica(store: RedisStore) -> tuple[CachedGerrit, FakeGerrit]:
    inner = FakeGerrit()
    return CachedGerrit(inner, store, TTL, stale_if_error=300, secret=SECRET), inner


# ---------------------------------------------------------------------------------------------------------------
# RedisStore
# ---------------------------------------------------------------------------------------------------------------


async def put(store: RedisStore, key: str, payload: Any, ttl: float = 60, buckets: tuple[int, ...] = ()) -> None:
    await store.write(key, Entry(payload, 1.8e9, 1.8e9, await store.snapshot(), buckets), ttl)


async def got(store: RedisStore, key: str) -> Any:
    """The payload under ``key`` if it is there and current, else None."""
    entry, current, _ = await store.read(key)
    return entry.payload if entry is not None and current else None


async def test_round_trip_is_json_never_pickle(make_store: MakeStore, raw: aioredis.Redis, namespace: str) -> None:
    store = make_store()
    payload = [{"id": 1000001, "username": "alice", "labels": {"Code-Review": [2, -1]}, "ok": None}, 1.7e9]

    await put(store, "account|q=alice|", payload, 30, (7, 9))

    assert await got(store, "account|q=alice|") == payload
    key = next(k for k in await keys_of(raw, namespace) if k.endswith(b"account|q=alice|"))
    raw_value = await raw.get(key)
    assert isinstance(raw_value, bytes)
    assert not raw_value.startswith(b"\x80")  # pickle protocol 2+ opcode
    head, _, body = raw_value.partition(b"\n")
    assert head.endswith(b" 7,9")  # epoch, clock, the generation slots it depends on
    assert decode_json(body)[0] == payload


async def test_missing_key_reads_none(make_store: MakeStore) -> None:
    assert await got(make_store(), "account|q=nobody|") is None


async def test_ttl_is_honoured(make_store: MakeStore, raw: aioredis.Redis, namespace: str) -> None:
    store = make_store()

    await put(store, "change|c=1|", {"n": 1}, 0.4)
    await put(store, "change|c=2|", {"n": 2}, 30)

    key_1 = next(k for k in await keys_of(raw, namespace) if k.endswith(b"c=1|"))
    key_2 = next(k for k in await keys_of(raw, namespace) if k.endswith(b"c=2|"))
    assert 0 < await raw.pttl(key_1) <= 400
    assert 29_000 < await raw.pttl(key_2) <= 30_000
    assert await got(store, "change|c=1|") == {"n": 1}
    await asyncio.sleep(0.6)
    assert await got(store, "change|c=1|") is None
    assert await got(store, "change|c=2|") == {"n": 2}


async def test_a_bump_on_one_store_is_seen_by_another_before_its_next_read(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    await put(a, "k1", 1, buckets=(1, 2))
    await put(a, "k2", 2, buckets=(3,))
    assert (await got(b, "k1"), await got(b, "k2")) == (1, 2)

    await a.bump((2,))

    assert (await got(b, "k1"), await got(b, "k2")) == (None, 2)
    await b.bump_all()
    assert await got(a, "k2") is None


async def test_a_lost_generation_table_reads_as_everything_changed(
    make_store: MakeStore, raw: aioredis.Redis, namespace: str
) -> None:
    # Redis allkeys-lru (or a restart) may drop the table: what was stored under it must never read as current.
    a, b = make_store(), make_store()
    await a.bump((5,))
    before = await a.snapshot()
    await put(a, "k", 1, buckets=(9,))
    assert await got(b, "k") == 1

    await raw.delete(a._gen_key)

    assert await got(b, "k") is None
    assert not await a.current(before, (9,))
    after = await a.snapshot()
    assert after.epoch != before.epoch
    await put(a, "k", 2, buckets=(9,))  # stored under the new table: current again
    assert await got(b, "k") == 2


async def test_generations_stay_in_their_namespace(make_store: MakeStore, namespace: str) -> None:
    ours = make_store()
    theirs = make_store(ns=namespace + "other:")
    for store in (ours, theirs):
        await put(store, "groups|a=1|", 1, buckets=(4,))

    await ours.bump((4,))
    await ours.bump_all()

    assert await got(ours, "groups|a=1|") is None
    assert await got(theirs, "groups|a=1|") == 1


def _redis_url_with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


async def test_database_from_the_url_is_used(redis_server: RedisServer, make_store: MakeStore, namespace: str) -> None:
    store = make_store(url=_redis_url_with_db(redis_server.url, 3))
    await put(store, "change|c=1|", 1)

    db3 = aioredis.Redis.from_url(_redis_url_with_db(redis_server.url, 3))
    try:
        assert len(await keys_of(db3, namespace)) == 2  # the entry and the generation table
    finally:
        await db3.aclose()


# ---------------------------------------------------------------------------------------------------------------
# Every kind through Redis
# ---------------------------------------------------------------------------------------------------------------

SAMPLES: dict[str, list[Any]] = {
    "account": [ALICE, Account(id=7), None],
    "credentials": [ALICE, None],
    "groups": [(Group("global:Registered-Users", "Registered Users"), Group("a1b2" * 10, "Devs")), ()],
    "access": [AccessResult(True), AccessResult(False, "cannot push on refs/heads/main of platform/build")],
    "capabilities": [frozenset({"createProject", "viewAccess"}), frozenset()],
    "change": [CHANGE, ChangeInfo(1, "p", "stable-1.0", "MERGED", {}, None), None],
}


def test_samples_cover_every_codec() -> None:
    assert set(SAMPLES) == set(CODECS)


@pytest.mark.parametrize("kind", sorted(CODECS))
async def test_codecs_round_trip_through_redis(make_store: MakeStore, kind: str) -> None:
    store = make_store()
    encode, decode = CODECS[kind]

    for i, value in enumerate(SAMPLES[kind]):
        await put(store, f"{kind}|i={i}|", encode(value))
        decoded = decode(await got(store, f"{kind}|i={i}|"))
        assert decoded == value
        assert type(decoded) is type(value)
        if isinstance(value, ChangeInfo):
            assert all(type(v) is LabelVotes for v in decoded.labels.values())


REPLICA_LOOKUPS: dict[str, Callable[[CachedGerrit], Any]] = {
    "account": lambda c: c.account(account_key_for("alice@example.com"), budget()),
    "account-negative": lambda c: c.account(account_key_for("nobody"), budget()),
    "credentials": lambda c: c.verify_credentials("alice", ALICE_PASSWORD, budget()),
    "credentials-negative": lambda c: c.verify_credentials("alice", "wrong", budget()),
    "groups": lambda c: c.groups(ALICE.id, budget()),
    "access": lambda c: c.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget()),
    "access-denied": lambda c: c.check_access("platform/build", ALICE.id, "refs/heads/main", "push", budget()),
    "capabilities": lambda c: c.capabilities(ALICE.id, budget()),
    "change": lambda c: c.change("4711", budget()),
    "change-negative": lambda c: c.change("999", budget()),
}


# ---------------------------------------------------------------------------------------------------------------
# Two replicas sharing one Redis
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lookup", REPLICA_LOOKUPS)
async def test_replica_b_is_served_what_replica_a_looked_up(make_store: MakeStore, lookup: str) -> None:
    a, inner_a = replica(make_store())
    b, inner_b = replica(make_store())

    from_a = await REPLICA_LOOKUPS[lookup](a)
    from_b = await REPLICA_LOOKUPS[lookup](b)

    assert from_a.source == "gerrit"
    assert from_b.source == "cache"
    assert from_b.value == from_a.value
    assert type(from_b.value) is type(from_a.value)
    assert inner_a.total == 1
    assert inner_b.total == 0


async def test_shared_credentials_entry_holds_no_secret(
    make_store: MakeStore, raw: aioredis.Redis, namespace: str
) -> None:
    a, _ = replica(make_store())
    await a.verify_credentials("alice", ALICE_PASSWORD, budget())

    (key,) = [k for k in await keys_of(raw, namespace) if b"credentials|" in k]
    value = await raw.get(key)
    assert value is not None
    for blob in (key, value):
        assert ALICE_PASSWORD.encode() not in blob
        assert f"alice:{ALICE_PASSWORD}".encode() not in blob


async def test_invalidate_on_a_is_seen_by_b(make_store: MakeStore) -> None:
    a, _ = replica(make_store())
    b, inner_b = replica(make_store())
    for lookup in REPLICA_LOOKUPS.values():
        await lookup(a)
    for lookup in REPLICA_LOOKUPS.values():
        assert (await lookup(b)).source == "cache"
    assert inner_b.total == 0

    assert await a.invalidate(account="alice@example.com") >= 1
    assert (await REPLICA_LOOKUPS["credentials"](b)).source == "gerrit"
    assert (await b.groups(ALICE.id, budget())).source == "gerrit"
    assert (await b.capabilities(ALICE.id, budget())).source == "gerrit"
    assert (await REPLICA_LOOKUPS["access"](b)).source == "gerrit"
    assert (await REPLICA_LOOKUPS["account"](b)).source == "gerrit"
    assert (await REPLICA_LOOKUPS["change"](b)).source == "cache"

    assert await a.invalidate(group="Devs") == 1
    assert (await b.groups(ALICE.id, budget())).source == "gerrit"

    assert await a.invalidate(project="platform/build") == 1
    assert (await REPLICA_LOOKUPS["access"](b)).source == "gerrit"
    assert (await REPLICA_LOOKUPS["change"](b)).source == "gerrit"  # its labels and submit requirements

    assert (await REPLICA_LOOKUPS["change"](b)).source == "cache"
    assert await a.invalidate(change="4711") == 1
    assert (await REPLICA_LOOKUPS["change"](b)).source == "gerrit"

    assert await a.invalidate(everything=True) == -1
    assert (await REPLICA_LOOKUPS["credentials"](b)).source == "gerrit"
    assert (await REPLICA_LOOKUPS["change-negative"](b)).source == "gerrit"


async def test_an_answer_fetched_on_b_across_an_invalidation_on_a_is_never_served(make_store: MakeStore) -> None:
    a, _ = replica(make_store())
    b, inner_b = replica(make_store())
    gate = asyncio.Event()
    original = inner_b.groups

    async def slow_groups(account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        await gate.wait()
        return await original(account_id, deadline)

    inner_b.groups = slow_groups  # type: ignore[method-assign]
    lookup = asyncio.create_task(b.groups(ALICE.id, budget()))
    await asyncio.sleep(0.05)  # B's lookup is at Gerrit
    await a.invalidate(account=str(ALICE.id))  # returns: from now on, nobody uses what B is fetching
    joined = asyncio.create_task(b.groups(ALICE.id, budget()))  # starts after: must not join B's flight
    await asyncio.sleep(0.05)
    gate.set()
    assert (await lookup).source == "gerrit"
    assert (await joined).source == "gerrit"
    assert inner_b.calls["groups"] == 3  # the overtaken answer was asked again, not used
    a_view = await a.groups(ALICE.id, budget())
    assert a_view.source == "cache"  # the answer fetched after the invalidation, not the one before


async def test_stale_entry_is_shared_during_an_outage(make_store: MakeStore) -> None:
    now = [1_700_000_000.0]
    store_a, store_b = make_store(), make_store()
    inner_a, inner_b = FakeGerrit(), FakeGerrit()
    a = CachedGerrit(inner_a, store_a, TTL, stale_if_error=300, secret=SECRET, clock=lambda: now[0])
    b = CachedGerrit(inner_b, store_b, TTL, stale_if_error=300, secret=SECRET, clock=lambda: now[0])
    await a.groups(ALICE.id, budget())

    now[0] += TTL.groups + 1
    inner_b.error = Unavailable("gerrit_timeout", "Gerrit did not answer", transient=True)
    fact = await b.groups(ALICE.id, budget())

    assert fact.source == "stale_cache"
    assert fact.value == (Group("global:Registered-Users", "Registered Users"), Group("a1b2" * 10, "Devs"))


# ---------------------------------------------------------------------------------------------------------------
# Redis outages: degrade to Gerrit lookups, never to an exception or an allow
# ---------------------------------------------------------------------------------------------------------------


async def test_redis_killed_mid_test_falls_through_to_gerrit(own_redis: RedisServer, make_store: MakeStore) -> None:
    cache, inner = replica(make_store(url=own_redis.url))
    assert (await REPLICA_LOOKUPS["groups"](cache)).source == "gerrit"
    assert (await REPLICA_LOOKUPS["groups"](cache)).source == "cache"
    assert inner.total == 1

    own_redis.kill()

    for name, lookup in REPLICA_LOOKUPS.items():
        started = time.monotonic()
        fact = await lookup(cache)
        assert time.monotonic() - started < OP_TIMEOUT * 2 + 0.5, name
        assert fact.source == "gerrit", name
    assert inner.total == 1 + len(REPLICA_LOOKUPS)
    # Nothing was cached: every lookup asks Gerrit again, and a denial stays a denial.
    denied = await REPLICA_LOOKUPS["access-denied"](cache)
    assert (denied.source, denied.value.allowed) == ("gerrit", False)
    assert (await REPLICA_LOOKUPS["credentials-negative"](cache)).value is None


async def test_redis_killed_and_gerrit_down_is_unavailable_not_allow(
    own_redis: RedisServer, make_store: MakeStore
) -> None:
    cache, inner = replica(make_store(url=own_redis.url))
    await REPLICA_LOOKUPS["access"](cache)

    own_redis.kill()
    inner.error = Unavailable("gerrit_unavailable", "Gerrit unreachable: ConnectError", transient=True)

    with pytest.raises(Unavailable) as info:
        await REPLICA_LOOKUPS["access"](cache)
    assert info.value.code == "gerrit_unavailable"


async def test_frozen_redis_is_bounded_by_the_op_timeout(own_redis: RedisServer, make_store: MakeStore) -> None:
    store = make_store(url=own_redis.url)
    await put(store, "groups|a=1|", [["x"], 1.7e9])  # connection established while the server is alive
    cache, inner = replica(store)

    own_redis.pause()  # accepts TCP, answers nothing
    try:
        started = time.monotonic()
        assert await got(store, "groups|a=1|") is None
        assert time.monotonic() - started < OP_TIMEOUT + 0.5

        started = time.monotonic()
        await store.write("groups|a=2|", Entry([["y"]], 1.8e9, 1.8e9, Snapshot("e", 1), ()), 60)
        assert time.monotonic() - started < OP_TIMEOUT + 0.5

        started = time.monotonic()
        fact = await cache.capabilities(ALICE.id, budget())
        elapsed = time.monotonic() - started
        assert fact.source == "gerrit"
        assert fact.value == frozenset({"createProject", "viewAccess"})
        assert elapsed < 2 * OP_TIMEOUT + 0.5  # one get and one set, each bounded
        assert inner.total == 1
    finally:
        own_redis.resume()

    # Back to normal once Redis answers again.
    await put(store, "change|c=1|", 1)
    assert await got(store, "change|c=1|") == 1


async def test_unreachable_redis_from_the_start(make_store: MakeStore) -> None:
    from _support.proc import free_port

    store = make_store(url=f"redis://127.0.0.1:{free_port()}/0")
    cache, inner = replica(store)

    started = time.monotonic()
    fact = await cache.account(account_key_for("alice"), budget())

    assert (fact.source, fact.value) == ("gerrit", ALICE)
    assert time.monotonic() - started < 2 * OP_TIMEOUT + 0.5
    assert inner.total == 1
