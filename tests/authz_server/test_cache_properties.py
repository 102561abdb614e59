"""Freshness as a property: after an invalidation has returned, no lookup on any replica is answered from a Gerrit
answer fetched before the invalidation started: neither one that starts afterwards nor one already in flight.

A hypothesis state machine interleaves, at random: lookups of every kind under every spelling (``web.git`` and
``web``; a change as ``12`` or ``web~12``; an email in any case; an account by id, username or email) on two
replicas sharing one store; Gerrit answers held back and released in any order, or failing as an outage (so stale
answers are served); invalidations through Admin's ``invalidate`` and through stream events of every kind
(``ref-updated``, ``batch-ref-updated``, change events, ``dropped-output``); evictions and the loss of the whole
store; reloads (a new cache over the same store while the old one finishes its lookups); time passing.

Every Gerrit answer carries the serial of the request that produced it, and the model knows when each request
started. What an invalidation must reach is the reference model below (:func:`covers`), written from the contract,
not from the implementation. The same machine runs over the memory store and over a real Redis.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _support.factories import make_events_config
from _support.redis import RedisServer, redis_binary
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from authz_server._accounts import AccountKey
from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._events import EventFollower
from authz_server._facts import AccessResult, Account, ChangeInfo, Fact, Group
from authz_server._store import MemoryStore
from authz_server.config import EventsConfig, TtlConfig
from authz_server.errors import Unavailable

TTL = TtlConfig(account=10, credentials=10, groups=10, capabilities=10, access=10, change=10, negative=10)
STALE = 1000.0

# The world --------------------------------------------------------------------------------------------------------

ALICE = Account(1000001, "alice", "alice@example.com")
BOB = Account(1000002, "bob", "bob@example.com")
ACCOUNTS = (ALICE, BOB)
PASSWORD = "pw"
PARENT = {"web": "All-Projects", "tools/web": "web", "other": "All-Projects", "All-Projects": None}
CHANGES = {12: "web", 14: "tools/web", 15: "other"}


def canon(project: str) -> str:
    """Gerrit's name for a project spelling (it drops a trailing ``.git``)."""
    return project.removesuffix(".git")


def ancestors(project: str) -> list[str]:
    chain, name = [], canon(project)
    while name is not None:
        chain.append(name)
        name = PARENT.get(name, "All-Projects") if name != "All-Projects" else None
    return chain


def account_named(name: str) -> Account | None:
    for a in ACCOUNTS:
        if name in (str(a.id), a.username) or name.lower() == a.email:
            return a
    return None


def change_number(spelling: str) -> int:
    return int(spelling.rsplit("~", 1)[-1])


@dataclass(frozen=True)
class Lookup:
    kind: str
    arg: str
    account: Account | None = None

    def about_account(self) -> Account | None:
        return self.account


LOOKUPS: list[Lookup] = []
for _a in ACCOUNTS:
    for _claim in (str(_a.id), _a.username, _a.email, _a.email.upper()):
        LOOKUPS.append(Lookup("account", _claim, _a))
    LOOKUPS.append(Lookup("credentials", _a.username, _a))
    LOOKUPS.append(Lookup("groups", "", _a))
    LOOKUPS.append(Lookup("capabilities", "", _a))
    for _p in ("web", "web.git", "tools/web", "tools/web.git", "other"):
        LOOKUPS.append(Lookup("access", _p, _a))
for _n, _p in CHANGES.items():
    LOOKUPS.append(Lookup("change", str(_n)))
    LOOKUPS.append(Lookup("change", f"{_p}~{_n}"))


@dataclass(frozen=True)
class Target:
    """What one invalidation names (an Admin call, or one invalidation an event stands for)."""

    kind: str  # account, project, group, change, everything
    value: str = ""


def covers(target: Target, lookup: Lookup) -> bool:
    """The reference model: the answers an invalidation must reach (the contract's words)."""
    if target.kind == "everything":
        return True
    if target.kind == "account":
        named = account_named(target.value)
        return named is not None and lookup.account == named
    if target.kind == "group":
        return lookup.kind == "groups"
    if target.kind == "change":
        return lookup.kind == "change" and change_number(lookup.arg) == change_number(target.value)
    if target.kind == "project":
        project = canon(target.value)
        if lookup.kind == "access":
            return project in ancestors(lookup.arg)
        if lookup.kind == "capabilities":
            return project == "All-Projects"
        if lookup.kind == "change":
            return project in ancestors(CHANGES[change_number(lookup.arg)])
    return False


def event_lines(targets_for: str) -> tuple[bytes, list[Target]]:
    """A stream line and what it must invalidate."""
    ref = {
        "config web": (("web", "refs/meta/config"), [Target("project", "web")]),
        "config All-Projects": (("All-Projects", "refs/meta/config"), [Target("project", "All-Projects")]),
        "user alice": (("All-Users", "refs/users/01/1000001"), [Target("account", "1000001")]),
        "group": (("All-Users", "refs/groups/ab/abcdef"), [Target("group", "x")]),
        "change 14 meta": (("tools/web", "refs/changes/14/14/meta"), [Target("change", "14")]),
    }
    if targets_for in ref:
        (project, name), targets = ref[targets_for]
        event = {"type": "ref-updated", "refUpdate": {"project": project, "refName": name}}
        return json.dumps(event).encode(), targets
    if targets_for == "batch":
        updates = [{"project": p, "refName": n} for (p, n), _ in (ref["config web"], ref["user alice"])]
        return json.dumps({"type": "batch-ref-updated", "refUpdates": updates}).encode(), [
            Target("project", "web"),
            Target("account", "1000001"),
        ]
    if targets_for == "vote 12":
        event = {"type": "comment-added", "change": {"number": 12, "project": "web"}}
        return json.dumps(event).encode(), [Target("change", "12")]
    assert targets_for == "dropped-output"
    return b'{"type":"dropped-output"}', [Target("everything")]


EVENTS = ["config web", "config All-Projects", "user alice", "group", "change 14 meta", "batch", "vote 12"]
EVENTS.append("dropped-output")
ADMIN = [Target("everything"), Target("group", "Developers")]
ADMIN += [Target("account", n) for n in ("1000001", "alice", "ALICE@example.com", "bob", "1000002")]
ADMIN += [Target("project", p) for p in ("web", "web.git", "tools/web", "All-Projects", "other")]
ADMIN += [Target("change", c) for c in ("12", "web~12", "14", "tools/web~14")]

# Gerrit double: every answer carries its request's serial --------------------------------------------------------

_ungated: contextvars.ContextVar[bool] = contextvars.ContextVar("ungated", default=False)


@dataclass
class World:
    now: int = 0
    started: dict[int, int] = field(default_factory=dict)  # request serial -> when it started
    pending: list[asyncio.Future[bool]] = field(default_factory=list)  # held answers: True = answer, False = outage

    def tick(self) -> int:
        self.now += 1
        return self.now


class SerialGerrit:
    def __init__(self, world: World) -> None:
        self.world = world

    async def _answer(self, make: Callable[[int], Any]) -> Fact[Any]:
        serial = self.world.tick()
        self.world.started[serial] = serial
        if not _ungated.get():
            gate = asyncio.get_running_loop().create_future()
            self.world.pending.append(gate)
            if not await gate:
                raise Unavailable("gerrit_timeout", "outage", transient=True)
        return Fact(make(serial))

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        a = account_named(key.value)
        return await self._answer(lambda s: None if a is None else Account(a.id, a.username, a.email, f"#{s}"))

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        a = account_named(username)
        return await self._answer(lambda s: None if a is None else Account(a.id, a.username, a.email, f"#{s}"))

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        return await self._answer(lambda s: (Group("uuid", f"#{s}"),))

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        return await self._answer(lambda s: AccessResult(True, f"#{s}"))

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        return await self._answer(lambda s: frozenset({f"#{s}"}))

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        n = change_number(change_id)
        return await self._answer(lambda s: ChangeInfo(n, CHANGES[n], f"#{s}", "NEW", {}, True))


def serial_of(lookup: Lookup, value: Any) -> int:
    if isinstance(value, Account):
        text = value.name
    elif isinstance(value, AccessResult):
        text = value.message
    elif isinstance(value, ChangeInfo):
        text = value.branch
    elif isinstance(value, frozenset):
        (text,) = value
    else:
        (group,) = value
        text = group.name
    return int(text.removeprefix("#"))


async def run_lookup(cache: CachedGerrit, lookup: Lookup) -> Fact[Any]:
    d = Deadline.after(3600)
    a = lookup.account
    if lookup.kind == "account":
        field_ = "account_id" if lookup.arg.isdigit() else "email" if "@" in lookup.arg else "username"
        return await cache.account(AccountKey(field_, lookup.arg), d)  # type: ignore[arg-type]
    assert lookup.kind == "change" or a is not None
    if lookup.kind == "credentials":
        return await cache.verify_credentials(lookup.arg, PASSWORD, d)
    if lookup.kind == "groups":
        return await cache.groups(a.id, d)  # type: ignore[union-attr]
    if lookup.kind == "capabilities":
        return await cache.capabilities(a.id, d)  # type: ignore[union-attr]
    if lookup.kind == "access":
        return await cache.check_access(lookup.arg, a.id, "refs/heads/main", "read", d)  # type: ignore[union-attr]
    return await cache.change(lookup.arg, d)


# The machine --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """An invalidation that has returned: when it started, when it returned, what it must reach."""

    started: int
    returned: int
    targets: tuple[Target, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Freshness(RuleBasedStateMachine):
    """Subclassed per backend with ``make_store`` (and ``lose_store``)."""

    events_config: EventsConfig

    def make_store(self) -> Any:
        raise NotImplementedError

    async def lose_everything(self) -> None:
        raise NotImplementedError

    async def evict_some(self, count: int) -> None:
        raise NotImplementedError

    def new_cache(self) -> CachedGerrit:
        kwargs: dict[str, Any] = {"stale_if_error": STALE, "secret": b"s" * 32, "clock": self.clock}
        if "tree" in inspect.signature(CachedGerrit).parameters:  # the design this replaced asks parents
            kwargs["tree"] = SerialGerrit(self.world)
        return CachedGerrit(SerialGerrit(self.world), self.store, TTL, **kwargs)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.clock = Clock()
        self.store = self.make_store()
        self.replicas = [self.new_cache(), self.new_cache()]
        self.done: list[Done] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.violations: list[str] = []

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        async def quiet() -> None:
            # Let every lookup run until it waits at a held answer, on a flight, or is done (Redis needs real I/O).
            for _ in range(self.settle_rounds):
                await asyncio.sleep(self.settle_sleep)

        self.run(quiet())

    settle_rounds = 8
    settle_sleep = 0.0

    async def _check(self, replica: int, lookup: Lookup) -> None:
        started = self.world.tick()
        try:
            fact = await run_lookup(self.replicas[replica], lookup)
        except Unavailable:
            return  # no answer is never an allow
        finished = self.world.tick()
        serial = serial_of(lookup, fact.value)
        for inv in self.done:
            # An invalidation that returned before this lookup did (whenever the lookup started).
            covered = inv.returned < finished and any(covers(t, lookup) for t in inv.targets)
            if covered and self.world.started[serial] < inv.started:
                self.violations.append(
                    f"replica {replica} {lookup} answered ({fact.source}) from request #{serial}, started "
                    f"before the invalidation {inv.targets} (t={inv.started}..{inv.returned}) it returned after "
                    f"(lookup t={started}..{finished})"
                )

    @initialize(
        focus=st.lists(st.sampled_from(LOOKUPS), min_size=1, max_size=3, unique=True),
        chosen=st.lists(st.sampled_from(ADMIN), min_size=1, max_size=3, unique=True),
    )
    def start(self, focus: list[Lookup], chosen: list[Target]) -> None:
        # A few lookups and invalidations per run, so that one answer is looked up again across invalidations.
        self.focus = focus
        self.targets = chosen
        self.follower = EventFollower(self.events_config, self.replicas[0], settle=())

    @rule(replica=st.integers(0, 1), data=st.data(), answer_now=st.booleans())
    def check(self, replica: int, data: st.DataObject, answer_now: bool) -> None:
        lookup = data.draw(st.sampled_from(self.focus))
        held = len(self.world.pending)
        self.tasks.append(self.loop.create_task(self._check(replica, lookup)))
        self.settle()
        if answer_now:  # else Gerrit answers later (gerrit_answers), after whatever happens meanwhile
            for gate in self.world.pending[held:]:
                gate.set_result(True)
            self.settle()

    @rule(data=st.data(), ok=st.booleans())
    def gerrit_answers(self, data: st.DataObject, ok: bool) -> None:
        pending = [f for f in self.world.pending if not f.done()]
        if pending:
            data.draw(st.sampled_from(pending)).set_result(ok)
        self.settle()

    def _invalidate(self, replica: int, targets: list[Target], call: Callable[[], Awaitable[Any]]) -> None:
        started = self.world.tick()
        token = _ungated.set(True)
        try:
            self.run(call())
        finally:
            _ungated.reset(token)
        self.done.append(Done(started, self.world.tick(), tuple(targets)))
        self.settle()

    @rule(replica=st.integers(0, 1), data=st.data())
    def admin_invalidate(self, replica: int, data: st.DataObject) -> None:
        what = data.draw(st.sampled_from(self.targets))
        kwargs: dict[str, Any] = {"everything": True} if what.kind == "everything" else {what.kind: what.value}
        self._invalidate(replica, [what], lambda: self.replicas[replica].invalidate(**kwargs))

    @rule(event=st.sampled_from(EVENTS))
    def stream_event(self, event: str) -> None:
        line, targets = event_lines(event)
        self._invalidate(0, targets, lambda: self.follower.handle_line(line))

    @rule(replica=st.integers(0, 1))
    def reload(self, replica: int) -> None:
        # The old cache keeps finishing the lookups it started; new ones use the new cache over the same store.
        self.replicas[replica] = self.new_cache()
        if replica == 0:
            self.follower = EventFollower(self.events_config, self.replicas[0], settle=())

    @rule(count=st.integers(1, 5))
    def evict(self, count: int) -> None:
        self.run(self.evict_some(count))

    @rule()
    def lose_the_store(self) -> None:
        self.run(self.lose_everything())

    @rule(seconds=st.sampled_from([1.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def no_check_used_an_answer_fetched_before_an_invalidation_it_followed(self) -> None:
        assert not self.violations, self.violations[0]

    def teardown(self) -> None:
        try:
            for gate in self.world.pending:
                if not gate.done():
                    gate.set_result(False)
            if self.tasks:
                self.run(asyncio.wait(self.tasks, timeout=10))
            self.run(self.store.close())
        finally:
            self.loop.close()
        assert not self.violations, self.violations[0]


SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def events_config(tmp_path: Any) -> EventsConfig:
    return make_events_config(tmp_path)


def test_memory_store(events_config: EventsConfig) -> None:
    class OnMemory(Freshness):
        def make_store(self) -> Any:
            return MemoryStore(max_entries=8)  # small: the LRU evicts all the time

        async def lose_everything(self) -> None:
            self.store._entries.clear()

        async def evict_some(self, count: int) -> None:
            for key in list(self.store._entries)[:count]:
                del self.store._entries[key]

    OnMemory.events_config = events_config
    run_state_machine_as_test(OnMemory, settings=SETTINGS)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.stop()


def test_two_replicas_on_one_redis(events_config: EventsConfig, redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    from authz_server._store import RedisStore

    class OnRedis(Freshness):
        settle_rounds = 4
        settle_sleep = 0.002

        def make_store(self) -> Any:
            self.namespace = f"p-{uuid.uuid4().hex[:10]}:"
            self.stores: list[RedisStore] = []
            return RedisStore(redis_server.url, self.namespace, op_timeout=2.0)

        def new_cache(self) -> CachedGerrit:
            # Each replica (and each reload) has its own connection to the one Redis.
            self.store = RedisStore(redis_server.url, self.namespace, op_timeout=2.0)
            self.stores.append(self.store)
            return super().new_cache()

        def teardown(self) -> None:
            for store in self.stores:
                self.loop.run_until_complete(store.close())
            super().teardown()

        async def _keys(self) -> tuple[aioredis.Redis, list[bytes]]:
            raw = aioredis.Redis.from_url(redis_server.url)
            return raw, [k async for k in raw.scan_iter(match=f"{self.namespace}*")]

        async def lose_everything(self) -> None:  # allkeys-lru or a restart: the generation table too
            raw, keys = await self._keys()
            if keys:
                await raw.delete(*keys)
            await raw.aclose()

        async def evict_some(self, count: int) -> None:
            raw, keys = await self._keys()
            entries = sorted(k for k in keys if not k.endswith(b":gen"))
            if entries:
                await raw.delete(*entries[:count])
            await raw.aclose()

    OnRedis.events_config = events_config
    run_state_machine_as_test(OnRedis, settings=settings(SETTINGS, max_examples=40))
