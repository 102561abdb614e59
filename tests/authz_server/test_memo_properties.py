"""The decision memo as a property: a memoized answer always equals a fresh evaluation at that moment.

A hypothesis state machine interleaves, at random: Checks (Basic credentials, JWTs with short lifetimes, no
credential; group, permission, capability, change, claim, ``not`` and ``anyone`` rules); changes in Gerrit (group
memberships, access rights, capabilities, a change's status, a password) followed or not by an invalidation
(Admin's ``invalidate`` of every kind, a stream event through the real :class:`EventFollower`); time passing past
the cache TTLs and the tokens' ``exp``; and reloads (a new policy, hence a new memo, as ``build_components`` does).

Every Check is decided twice at the same moment over the same cache and store: by the Authorizer with the memo and
by one without it. Their decisions must agree in everything a caller, the audit or the trace shows (outcome, code,
reason, rule, identity, and the trace's results). A second test runs the same machine with the memo's generation
re-check removed (a subclass whose ``_current`` always says yes) and asserts hypothesis finds a disagreement: the
property can fail, and it is the re-check that makes it hold.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _support.factories import basic_auth, make_events_config, make_input, make_rules
from _support.oidc import SigningKey, make_claims
from _support.redis import RedisServer, redis_binary
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from authz_server._accounts import AccountKey
from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer, Decision
from authz_server._events import EventFollower
from authz_server._facts import AccessResult, Account, ChangeInfo, Fact, Group
from authz_server._identity import BasicCredentialsSource, IdentityResolver, JwtSource
from authz_server._identity.jwt import JwtVerifier
from authz_server._memo import DecisionMemo, MemoEntry
from authz_server._store import MemoryStore
from authz_server.config import EventsConfig, JwtConfig, TtlConfig

TTL = TtlConfig(account=30, credentials=20, groups=30, capabilities=40, access=30, change=25, negative=10)
ISSUER = "https://issuer.example/realms/dev"
AUD = "gerrit-authz"
KEY = SigningKey.rsa("rsa-1")

ALICE = Account(1000001, "alice", "alice@example.com")
BOB = Account(1000002, "bob", "bob@example.com")
ACCOUNTS = {a.id: a for a in (ALICE, BOB)}
DEVS = Group("d" * 40, "devs")
OPS = Group("e" * 40, "ops")
PROJECTS = ("web", "tools")


def policy(variant: int) -> list[dict[str, Any]]:
    """Two policies: a reload swaps them (the group a rule needs changes, so a stale memo would show)."""
    group = "devs" if variant == 0 else "ops"
    return [
        {"name": "group", "match": {"path": "/g/{x}"}, "require": {"group": group}},
        {"name": "not-group", "match": {"path": "/n"}, "require": {"not": {"group": "ops"}}},
        {
            "name": "perm",
            "match": {"path": "/p/{project}/**"},
            "require": {"permission": {"project": "{project}", "ref": "refs/heads/main", "perm": "read"}},
        },
        {"name": "cap", "match": {"path": "/cap"}, "require": {"capability": "administrateServer"}},
        {"name": "change", "match": {"path": "/c/{n}"}, "require": {"change": {"id": "{n}", "status": "NEW"}}},
        {"name": "claim", "match": {"path": "/claim"}, "require": {"claim": {"name": "role", "equals": "admin"}}},
        {"name": "auth", "match": {"path": "/me"}, "require": "authenticated"},
        {"name": "open", "match": {"path": "/open"}, "require": "anyone"},
    ]


PATHS = ["/g/1", "/g/2", "/n", "/p/web/x", "/p/tools/y", "/cap", "/c/12", "/c/13", "/claim", "/me", "/open"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """Gerrit's state now (what a request to Gerrit answers)."""

    def __init__(self) -> None:
        self.passwords = {"alice": "pw", "bob": "pw"}
        self.members: dict[int, set[Group]] = {ALICE.id: {DEVS}, BOB.id: set()}
        self.read: set[tuple[str, int]] = {("web", ALICE.id)}
        self.caps: dict[int, set[str]] = {ALICE.id: set(), BOB.id: {"administrateServer"}}
        self.status = {12: "NEW", 13: "MERGED"}


class WorldGerrit:
    def __init__(self, world: World) -> None:
        self.w = world

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        for a in ACCOUNTS.values():
            if key.value in (str(a.id), a.username, a.email):
                return Fact(a)
        return Fact(None)

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        ok = self.w.passwords.get(username) == password
        return Fact(next((a for a in ACCOUNTS.values() if a.username == username), None) if ok else None)

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        return Fact(tuple(sorted(self.w.members.get(account_id, ()), key=lambda g: g.name)))

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        return Fact(AccessResult((project, account_id) in self.w.read))

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        return Fact(frozenset(self.w.caps.get(account_id, ())))

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        n = int(change_id)
        if n not in self.w.status:
            return Fact(None)
        return Fact(ChangeInfo(n, "web", "main", self.w.status[n], {}, None))


def shown(decision: Decision) -> tuple[Any, ...]:
    """Everything a caller, the audit line and Explain show of a decision (the trace's sources excepted: a hit
    keeps the trace it was made with)."""
    error = decision.error
    return (
        decision.allowed,
        None if error is None else (type(error).__name__, error.code, error.reason),
        decision.rule,
        decision.identity.account,
        decision.identity.principal.subject if decision.identity.principal else None,
        decision.shadow,
        decision.challenges,
        [(t.kind, t.target, t.result, t.depth) for t in decision.trace],
    )


class Memoized(RuleBasedStateMachine):
    memo_class: type[DecisionMemo] = DecisionMemo
    events_config: EventsConfig

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.world = World()
        self.store = self.make_store()
        self.cache = CachedGerrit(
            WorldGerrit(self.world), self.store, TTL, stale_if_error=0, secret=b"k" * 32, clock=self.clock
        )
        self.follower = EventFollower(self.events_config, self.cache)
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self._jwks))
        self.jwt_config = JwtConfig(issuer=ISSUER, audiences=[AUD], jwks_url=ISSUER + "/keys", leeway=0)
        self.verifier = JwtVerifier(self.jwt_config, self.http, clock=self.clock)
        self.hits = 0
        self.variant = 0
        self.tokens: dict[tuple[str, int], str] = {}  # a token is kept (and expires) until new_tokens
        self.seen: list[tuple[str, int, str]] = []  # requests made, to be made again
        self._build()

    def make_store(self) -> Any:
        return MemoryStore(max_entries=50, clock=self.clock)

    @staticmethod
    def _jwks(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [KEY.public_jwk()]})

    def _build(self) -> None:
        rules = make_rules(policy(self.variant))
        sources = [JwtSource(self.jwt_config, self.verifier), BasicCredentialsSource(self.cache)]
        identity = IdentityResolver(sources, self.cache)
        memo = self.memo_class(self.store, b"m" * 32, max_entries=20, clock=self.clock)
        self.memoized = Authorizer(rules, identity, self.cache, memo=memo)
        self.fresh = Authorizer(rules, identity, self.cache)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.http.aclose())
        self.run(self.store.close())
        self.loop.close()

    # -- Checks ----------------------------------------------------------------------------------------------

    def _credential(self, who: str, lifetime: int) -> dict[str, str]:
        if who == "none":
            return {}
        if who.startswith("jwt:"):
            token = self.tokens.get((who, lifetime))
            if token is None:
                name = who[4:]
                claims = make_claims(ISSUER, AUD, now=self.clock.now, lifetime=lifetime, email=f"{name}@example.com")
                claims["role"] = "admin" if name == "bob" else "dev"
                token = self.tokens[(who, lifetime)] = KEY.sign(claims)
            return {"authorization": "Bearer " + token}
        user, _, password = who.partition(":")
        return {"authorization": basic_auth(user, password)}

    @rule(
        who=st.sampled_from(["alice:pw", "bob:pw", "alice:old", "jwt:alice", "jwt:bob", "none"]),
        lifetime=st.sampled_from([5, 60]),
        path=st.sampled_from(PATHS),
        repeat=st.integers(1, 3),
    )
    def check(self, who: str, lifetime: int, path: str, repeat: int) -> None:
        self.seen.append((who, lifetime, path))
        self._decide_both(who, lifetime, path, repeat)

    @rule(data=st.data())
    def check_again(self, data: st.DataObject) -> None:
        """A request already made (so possibly remembered), whatever happened since."""
        if self.seen:
            self._decide_both(*data.draw(st.sampled_from(self.seen)), 1)

    @rule()
    def new_tokens(self) -> None:
        self.tokens.clear()

    def _decide_both(self, who: str, lifetime: int, path: str, repeat: int) -> None:
        inp = make_input("GET", path, self._credential(who, lifetime))
        for _ in range(repeat):
            memoized = self.run(self.memoized.decide(inp, Deadline.after(5)))
            fresh = self.run(self.fresh.decide(inp, Deadline.after(5)))
            self.hits += memoized.memo
            assert shown(memoized) == shown(fresh), (who, path, memoized.memo)

    # -- Gerrit changes, invalidated or not ------------------------------------------------------------------

    def _then(self, invalidate: dict[str, str] | None) -> None:
        if invalidate is not None:
            self.run(self.cache.invalidate(**invalidate))  # type: ignore[arg-type]

    @rule(account=st.sampled_from([ALICE.id, BOB.id]), group=st.sampled_from([DEVS, OPS]), tell=st.booleans())
    def toggle_membership(self, account: int, group: Group, tell: bool) -> None:
        self.world.members[account] ^= {group}
        self._then({"group": group.name} if tell else None)

    @rule(account=st.sampled_from([ALICE.id, BOB.id]), project=st.sampled_from(PROJECTS), tell=st.booleans())
    def toggle_read(self, account: int, project: str, tell: bool) -> None:
        self.world.read ^= {(project, account)}
        self._then({"project": project} if tell else None)

    @rule(account=st.sampled_from([ALICE.id, BOB.id]), tell=st.booleans())
    def toggle_capability(self, account: int, tell: bool) -> None:
        self.world.caps[account] ^= {"administrateServer"}
        self._then({"project": "All-Projects"} if tell else None)

    @rule(number=st.sampled_from([12, 13]), tell=st.booleans())
    def toggle_change(self, number: int, tell: bool) -> None:
        self.world.status[number] = "MERGED" if self.world.status[number] == "NEW" else "NEW"
        self._then({"change": str(number)} if tell else None)

    @rule(tell=st.sampled_from(["alice", "1000001", "alice@example.com", None]))
    def change_password(self, tell: str | None) -> None:
        self.world.passwords["alice"] = "old" if self.world.passwords["alice"] == "pw" else "pw"
        self._then({"account": tell} if tell else None)

    @rule(
        line=st.sampled_from(
            [
                {"type": "ref-updated", "refUpdate": {"project": "web", "refName": "refs/meta/config"}},
                {"type": "ref-updated", "refUpdate": {"project": "All-Projects", "refName": "refs/meta/config"}},
                {"type": "ref-updated", "refUpdate": {"project": "All-Users", "refName": "refs/groups/ab/abcdef"}},
                {"type": "ref-updated", "refUpdate": {"project": "All-Users", "refName": "refs/users/01/1000001"}},
                {"type": "change-merged", "change": {"number": 12, "project": "web"}},
                {"type": "dropped-output"},
            ]
        )
    )
    def stream_event(self, line: dict[str, Any]) -> None:
        self.run(self.follower.handle_line(json.dumps(line)))

    @rule()
    def invalidate_everything(self) -> None:
        self.run(self.cache.invalidate(everything=True))

    @rule(seconds=st.sampled_from([1.0, 6.0, 11.0, 31.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reload(self) -> None:
        self.variant ^= 1
        self._build()


class NoRecheck(DecisionMemo):
    """The mutant: a hit trusts its entry without re-reading the generations."""

    async def _current(self, entry: MemoEntry) -> bool:
        return True


class NoExpiry(DecisionMemo):
    """The other mutant: a hit ignores the facts' TTLs and the token's ``exp`` (generations still checked)."""

    async def get(self, key: bytes) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None or not await self._current(entry):
            return None
        return entry.decision


SETTINGS = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def events_config(tmp_path: Any) -> EventsConfig:
    return make_events_config(tmp_path)


def test_a_memoized_answer_equals_a_fresh_one(events_config: EventsConfig) -> None:
    hits: list[int] = []

    class Machine(Memoized):
        def teardown(self) -> None:
            hits.append(self.hits)
            super().teardown()

    Machine.events_config = events_config
    run_state_machine_as_test(Machine, settings=SETTINGS)
    assert sum(hits) > 0, "the memo was never hit: the property proved nothing"


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


def test_on_redis_too(events_config: EventsConfig, redis_server: RedisServer) -> None:
    """The same property with the generations in a real Redis (a hit re-reads them there), and the loss of the
    whole Redis (allkeys-lru or a restart) as one more event."""
    import redis.asyncio as aioredis

    from authz_server._store import RedisStore

    hits: list[int] = []

    class OnRedis(Memoized):
        def make_store(self) -> Any:
            self.namespace = f"m-{uuid.uuid4().hex[:10]}:"
            return RedisStore(redis_server.url, self.namespace, op_timeout=2.0)

        @rule()
        def lose_redis(self) -> None:
            async def lose() -> None:
                raw = aioredis.Redis.from_url(redis_server.url)
                keys = [k async for k in raw.scan_iter(match=f"{self.namespace}*")]
                if keys:
                    await raw.delete(*keys)
                await raw.aclose()

            self.run(lose())

        def teardown(self) -> None:
            hits.append(self.hits)
            super().teardown()

    OnRedis.events_config = events_config
    run_state_machine_as_test(OnRedis, settings=settings(SETTINGS, max_examples=40))
    assert sum(hits) > 0


@pytest.mark.parametrize("mutant", [NoRecheck, NoExpiry], ids=["no-generation-recheck", "no-expiry"])
def test_without_the_generation_recheck_the_property_fails(
    events_config: EventsConfig, mutant: type[DecisionMemo]
) -> None:
    class Mutant(Memoized):
        memo_class = mutant

    Mutant.events_config = events_config
    # The expiry mutant needs a request made again after its token or a fact expired, with nothing invalidating
    # in between: rarer, so more examples.
    # Derandomized: a mutant must be caught on every run, not on most (hypothesis is pinned by the lock, so the
    # examples it tries are the same each time).
    examples = 150 if mutant is NoRecheck else 600
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(Mutant, settings=settings(SETTINGS, max_examples=examples, derandomize=True))
    # It is a memo hit that disagrees with the fresh decision (the message ends with the hit's ``memo`` flag).
    assert str(info.value).splitlines()[0].endswith(", True)"), info.value
