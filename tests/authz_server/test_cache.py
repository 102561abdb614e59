"""CachedGerrit over a MemoryStore: TTLs per kind, negative caching, single-flight, stale-if-error, invalidation.

The inner GerritFacts is a counting fake; time is an injected clock (the store's own expiry runs on the real
loop clock and is far longer than any test, so only CachedGerrit's freshness logic is exercised here).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from authz_server._accounts import AccountKey
from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._facts import AccessResult, Account, ChangeInfo, Fact, Group, LabelVotes
from authz_server._generations import Snapshot, bucket
from authz_server._store import Entry, MemoryStore
from authz_server.config import TtlConfig
from authz_server.errors import Unavailable

# Distinct TTLs per kind so a test fails if one kind used another's TTL.
TTL = TtlConfig(account=50, credentials=40, groups=30, capabilities=25, access=20, change=5, negative=3)
STALE = 100.0
SECRET = b"test-hmac-secret-0123456789abcdef"

ALICE = Account(id=1000001, username="alice", email="alice@example.com", name="Alice")
BOB = Account(id=1000002, username="bob", email="bob@example.com", name="Bob")
ALICE_PASSWORD = "alice-Http-Pw-93f1"


def account_key_for(value: str) -> AccountKey:
    return AccountKey("email" if "@" in value else "username", value)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeGerrit:
    """A counting GerritFacts. ``gate`` holds every answer until set; ``error`` is raised instead of answering."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[Any, ...]] = Counter()
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.accounts: dict[str, Account] = {"alice": ALICE, "alice@example.com": ALICE, "1000001": ALICE}
        self.accounts |= {"bob": BOB, "bob@example.com": BOB, "1000002": BOB}
        self.passwords = {"alice": ALICE_PASSWORD}
        self.groups_of: dict[int, tuple[Group, ...]] = {
            ALICE.id: (Group("global:Registered-Users", "Registered Users"), Group("a" * 40, "Developers")),
            BOB.id: (Group("global:Registered-Users", "Registered Users"),),
        }
        self.grants: set[tuple[str, int, str, str]] = {("platform/build", ALICE.id, "refs/heads/main", "read")}
        self.caps: dict[int, frozenset[str]] = {ALICE.id: frozenset({"createProject"}), BOB.id: frozenset()}
        self.changes: dict[str, ChangeInfo] = {
            "4711": ChangeInfo(4711, "platform/build", "main", "NEW", {"Code-Review": LabelVotes(2, -1)}, True)
        }
        # The project tree (unknown projects are children of All-Projects); None: the answer is an outage.

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def _answer(self, call: tuple[Any, ...], value: Any) -> Fact[Any]:
        self.calls[call] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.error is not None:
                raise self.error
            return Fact(value)
        finally:
            self.in_flight -= 1

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        query = key.value
        # Gerrit finds emails whatever their case.
        found = self.accounts.get(query) or (self.accounts.get(query.lower()) if key.field == "email" else None)
        return await self._answer(("account", query), found)

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        ok = self.passwords.get(username) == password
        return await self._answer(("credentials", username), self.accounts.get(username) if ok else None)

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        return await self._answer(("groups", account_id), self.groups_of.get(account_id, ()))

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        allowed = (project, account_id, ref, perm) in self.grants
        result = AccessResult(True) if allowed else AccessResult(False, f"cannot {perm} {ref} of {project}")
        return await self._answer(("access", project, account_id, ref, perm), result)

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        return await self._answer(("capabilities", account_id), self.caps.get(account_id, frozenset()))

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        return await self._answer(("change", change_id), self.changes.get(change_id))


class Env:
    def __init__(self, ttl: TtlConfig = TTL, stale: float = STALE) -> None:
        self.inner = FakeGerrit()
        self.store = MemoryStore()
        self.clock = Clock()
        self.cache = CachedGerrit(self.inner, self.store, ttl, stale_if_error=stale, secret=SECRET, clock=self.clock)

    def stored_keys(self) -> list[str]:
        return sorted(self.store.held())

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture
async def env() -> Any:
    e = Env()
    yield e
    await e.close()


def budget(seconds: float = 10.0) -> Deadline:
    return Deadline.after(seconds)


Lookup = Callable[[CachedGerrit], Awaitable[Fact[Any]]]

# kind -> (a positive lookup, its TTL)
POSITIVE: dict[str, tuple[Lookup, float]] = {
    "account": (lambda c: c.account(account_key_for("alice"), budget()), TTL.account),
    "credentials": (lambda c: c.verify_credentials("alice", ALICE_PASSWORD, budget()), TTL.credentials),
    "groups": (lambda c: c.groups(ALICE.id, budget()), TTL.groups),
    "access": (lambda c: c.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget()), TTL.access),
    "capabilities": (lambda c: c.capabilities(ALICE.id, budget()), TTL.capabilities),
    "change": (lambda c: c.change("4711", budget()), TTL.change),
}

NEGATIVE: dict[str, Lookup] = {
    "account": lambda c: c.account(account_key_for("nobody@example.com"), budget()),
    "credentials": lambda c: c.verify_credentials("alice", "wrong-password", budget()),
    "access": lambda c: c.check_access("platform/build", ALICE.id, "refs/heads/main", "push", budget()),
    "change": lambda c: c.change("999999", budget()),
}


# ---------------------------------------------------------------------------------------------------------------
# Freshness
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", POSITIVE)
async def test_hit_within_ttl_is_served_from_cache(env: Env, kind: str) -> None:
    lookup, ttl = POSITIVE[kind]

    first = await lookup(env.cache)
    env.clock.advance(ttl - 0.01)
    second = await lookup(env.cache)

    assert first.source == "gerrit"
    assert second.source == "cache"
    assert second.value == first.value
    assert env.inner.total == 1


@pytest.mark.parametrize("kind", POSITIVE)
async def test_entry_expires_after_its_kinds_ttl(env: Env, kind: str) -> None:
    lookup, ttl = POSITIVE[kind]

    await lookup(env.cache)
    env.clock.advance(ttl)
    refreshed = await lookup(env.cache)
    again = await lookup(env.cache)

    assert refreshed.source == "gerrit"
    assert again.source == "cache"
    assert env.inner.total == 2


@pytest.mark.parametrize("kind", NEGATIVE)
async def test_negative_answers_use_the_negative_ttl(env: Env, kind: str) -> None:
    lookup = NEGATIVE[kind]

    first = await lookup(env.cache)
    env.clock.advance(TTL.negative - 0.01)
    cached = await lookup(env.cache)
    env.clock.advance(0.01)
    refreshed = await lookup(env.cache)

    if kind == "access":
        assert first.value.allowed is False
        assert cached.value == first.value  # Gerrit's message is kept with the denial
    else:
        assert first.value is None
        assert cached.value is None
    assert (first.source, cached.source, refreshed.source) == ("gerrit", "cache", "gerrit")
    assert env.inner.total == 2


async def test_new_grant_takes_effect_after_negative_ttl(env: Env) -> None:
    lookup = NEGATIVE["access"]
    assert (await lookup(env.cache)).value.allowed is False

    env.inner.grants.add(("platform/build", ALICE.id, "refs/heads/main", "push"))
    assert (await lookup(env.cache)).value.allowed is False  # still the cached denial
    env.clock.advance(TTL.negative)

    assert (await lookup(env.cache)).value == AccessResult(True)


async def test_zero_ttl_disables_caching_for_that_kind() -> None:
    e = Env(ttl=TtlConfig(change=0, negative=0))
    try:
        await e.cache.change("4711", budget())
        await e.cache.change("4711", budget())
        await e.cache.account(account_key_for("nobody"), budget())
        await e.cache.account(account_key_for("nobody"), budget())
        await e.cache.account(account_key_for("alice"), budget())
        await e.cache.account(account_key_for("alice"), budget())

        assert e.inner.calls[("change", "4711")] == 2
        assert e.inner.calls[("account", "nobody")] == 2
        assert e.inner.calls[("account", "alice")] == 1
        # Only alice's positive account answer is kept.
        assert e.stored_keys() == ["account|f=username|q=alice|"]
    finally:
        await e.close()


async def test_entries_are_kept_for_ttl_plus_stale_window_in_the_store(env: Env) -> None:
    # The store's own expiry must cover the stale window, or stale_if_error could never serve anything.
    seen: list[float] = []
    original = env.store.write

    async def spy(key: str, value: Entry, ttl: float) -> None:
        seen.append(ttl)
        await original(key, value, ttl)

    env.store.write = spy  # type: ignore[method-assign]
    await env.cache.groups(ALICE.id, budget())
    await env.cache.account(account_key_for("nobody"), budget())

    # A negative answer is kept only while fresh: it is never reused during an outage.
    assert seen == [TTL.groups + STALE, TTL.negative]


# ---------------------------------------------------------------------------------------------------------------
# Single-flight
# ---------------------------------------------------------------------------------------------------------------


async def test_concurrent_identical_lookups_make_one_gerrit_request(env: Env) -> None:
    env.inner.gate = asyncio.Event()

    tasks = [asyncio.create_task(env.cache.groups(ALICE.id, budget())) for _ in range(100)]
    await asyncio.sleep(0.01)
    assert env.inner.total == 1  # everybody is waiting on the one request
    env.inner.gate.set()
    results = await asyncio.gather(*tasks)

    assert env.inner.calls == Counter({("groups", ALICE.id): 1})
    assert {id(r.value) for r in results} == {id(results[0].value)}
    assert all(r.value == env.inner.groups_of[ALICE.id] for r in results)
    # And the answer is now cached.
    assert (await env.cache.groups(ALICE.id, budget())).source == "cache"
    assert env.inner.total == 1


async def test_concurrent_identical_lookups_with_gather(env: Env) -> None:
    lookup = POSITIVE["access"][0]

    results = await asyncio.gather(*(lookup(env.cache) for _ in range(100)))

    assert env.inner.total == 1
    assert all(r.value == AccessResult(True) for r in results)


async def test_concurrent_different_keys_are_separate_requests(env: Env) -> None:
    env.inner.gate = asyncio.Event()
    queries = ["alice", "bob", "alice@example.com", "bob@example.com", "1000001", "nobody"]

    tasks = [asyncio.create_task(env.cache.account(account_key_for(q), budget())) for q in queries for _ in range(5)]
    await asyncio.sleep(0.01)
    env.inner.gate.set()
    results = await asyncio.gather(*tasks)

    assert env.inner.calls == Counter({("account", q): 1 for q in queries})
    assert env.inner.max_in_flight == len(queries)  # in parallel, not one after the other
    assert [r.value for r in results[::5]] == [env.inner.accounts.get(q) for q in queries]


async def test_same_arguments_of_different_kinds_do_not_share_a_flight(env: Env) -> None:
    await asyncio.gather(env.cache.groups(ALICE.id, budget()), env.cache.capabilities(ALICE.id, budget()))

    assert env.inner.calls == Counter({("groups", ALICE.id): 1, ("capabilities", ALICE.id): 1})


@pytest.mark.parametrize(
    "error", [Unavailable("gerrit_timeout", "Gerrit did not answer", transient=True), RuntimeError("bug in the client")]
)
async def test_owner_error_propagates_to_waiters_and_is_not_cached(env: Env, error: Exception) -> None:
    env.inner.gate = asyncio.Event()
    env.inner.error = error

    tasks = [asyncio.create_task(env.cache.change("4711", budget())) for _ in range(20)]
    await asyncio.sleep(0.01)
    env.inner.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert env.inner.total == 1
    assert all(r is error for r in results)
    assert env.stored_keys() == []

    env.inner.gate = None
    env.inner.error = None
    fact = await env.cache.change("4711", budget())
    assert fact.source == "gerrit"
    assert fact.value == env.inner.changes["4711"]
    assert env.inner.total == 2


async def test_waiter_is_bounded_by_its_own_deadline(env: Env) -> None:
    env.inner.gate = asyncio.Event()
    owner = asyncio.create_task(env.cache.account(account_key_for("alice"), budget()))
    await asyncio.sleep(0)

    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await env.cache.account(account_key_for("alice"), budget(0.05))
    assert time.monotonic() - started < 1.0
    assert info.value.code == "deadline_exceeded"

    env.inner.gate.set()
    assert (await owner).value == ALICE  # the owner is unaffected
    assert env.inner.total == 1


async def test_owner_cancelled_does_not_cancel_waiters(env: Env) -> None:
    # The owner's caller going away (e.g. Envoy's ext_authz timeout cancelling its Check) must not fail the
    # other Checks that joined its flight.
    env.inner.gate = asyncio.Event()
    owner = asyncio.create_task(env.cache.account(account_key_for("alice"), budget()))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(env.cache.account(account_key_for("alice"), budget())) for _ in range(5)]
    await asyncio.sleep(0.01)

    owner.cancel()
    await asyncio.sleep(0.01)
    env.inner.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert owner.cancelled()
    assert [r.value if isinstance(r, Fact) else r for r in results] == [ALICE] * 5
    assert env.inner.calls[("account", "alice")] == 2  # the cancelled request and one retry, not one per waiter


async def test_waiter_cancelled_leaves_owner_and_others_alone(env: Env) -> None:
    env.inner.gate = asyncio.Event()
    owner = asyncio.create_task(env.cache.account(account_key_for("alice"), budget()))
    await asyncio.sleep(0)
    leaving = asyncio.create_task(env.cache.account(account_key_for("alice"), budget()))
    staying = asyncio.create_task(env.cache.account(account_key_for("alice"), budget()))
    await asyncio.sleep(0.01)

    leaving.cancel()
    await asyncio.sleep(0)
    env.inner.gate.set()

    assert (await owner).value == ALICE
    assert (await staying).value == ALICE
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert env.inner.total == 1


# ---------------------------------------------------------------------------------------------------------------
# stale_if_error
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", POSITIVE)
async def test_stale_answer_during_outage_within_window(env: Env, kind: str) -> None:
    lookup, ttl = POSITIVE[kind]
    fresh = await lookup(env.cache)

    env.clock.advance(ttl + STALE - 0.01)
    env.inner.error = Unavailable("gerrit_timeout", "Gerrit did not answer within 2.000s", transient=True)
    stale = await lookup(env.cache)

    assert stale.source == "stale_cache"
    assert stale.value == fresh.value
    assert "did not answer" in stale.detail
    assert env.inner.total == 2  # Gerrit was asked first


async def test_stale_window_closed_raises(env: Env) -> None:
    await env.cache.groups(ALICE.id, budget())

    env.clock.advance(TTL.groups + STALE)
    env.inner.error = Unavailable("gerrit_unavailable", "Gerrit unreachable: ConnectError", transient=True)
    with pytest.raises(Unavailable) as info:
        await env.cache.groups(ALICE.id, budget())

    assert info.value.code == "gerrit_unavailable"


async def test_negative_entry_is_never_served_stale(env: Env) -> None:
    await env.cache.change("999999", budget())

    env.clock.advance(TTL.negative + 1)
    env.inner.error = Unavailable("gerrit_timeout", "slow", transient=True)
    with pytest.raises(Unavailable):
        await env.cache.change("999999", budget())


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("gerrit_auth_failed", "Gerrit refused the service account (401)"),
        Unavailable("gerrit_error", "Gerrit sent a body that is not JSON"),
    ],
)
async def test_a_definite_failure_never_brings_back_a_stale_allow(env: Env, error: Unavailable) -> None:
    # Only an outage (unreachable, timeout, 5xx, 429) may be bridged with an expired answer.
    assert (await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())).value.allowed

    env.clock.advance(TTL.access + 1)
    env.inner.error = error
    with pytest.raises(Unavailable) as info:
        await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())
    assert info.value is error


async def test_a_definite_deny_after_an_allow_replaces_it_for_good(env: Env) -> None:
    await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())
    env.clock.advance(TTL.access + 1)
    env.inner.grants.clear()  # revoked: Gerrit now answers "not allowed"
    assert not (
        await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())
    ).value.allowed

    # An outage right after: the revoked allow is gone, not waiting in the stale window.
    env.clock.advance(TTL.negative + 1)
    env.inner.error = Unavailable("gerrit_timeout", "slow", transient=True)
    with pytest.raises(Unavailable):
        await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())


async def test_no_entry_and_unavailable_raises(env: Env) -> None:
    env.inner.error = Unavailable("gerrit_timeout", "Gerrit did not answer", transient=True)

    with pytest.raises(Unavailable) as info:
        await env.cache.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget())

    assert info.value.code == "gerrit_timeout"
    assert env.stored_keys() == []


async def test_other_errors_are_not_masked_by_stale_entries(env: Env) -> None:
    await env.cache.groups(ALICE.id, budget())
    env.clock.advance(TTL.groups + 1)
    env.inner.error = RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await env.cache.groups(ALICE.id, budget())


async def test_recovery_after_outage_refreshes_and_recaches(env: Env) -> None:
    await env.cache.capabilities(ALICE.id, budget())
    env.clock.advance(TTL.capabilities + 1)
    env.inner.error = Unavailable("gerrit_timeout", "slow", transient=True)
    assert (await env.cache.capabilities(ALICE.id, budget())).source == "stale_cache"

    env.inner.error = None
    env.inner.caps[ALICE.id] = frozenset({"createProject", "viewCaches"})
    refreshed = await env.cache.capabilities(ALICE.id, budget())
    cached = await env.cache.capabilities(ALICE.id, budget())

    assert refreshed.source == "gerrit"
    assert refreshed.value == frozenset({"createProject", "viewCaches"})
    assert cached.source == "cache"


# ---------------------------------------------------------------------------------------------------------------
# Credentials: keyed by an HMAC, never stored
# ---------------------------------------------------------------------------------------------------------------


def store_text(env: Env) -> str:
    return "\n".join(f"{key!r} {value!r}" for key, value in env.store._entries.items())


async def test_credentials_never_appear_in_the_store(env: Env) -> None:
    fact = await env.cache.verify_credentials("alice", ALICE_PASSWORD, budget())
    await env.cache.verify_credentials("alice", "wrong-password", budget())
    assert fact.value == ALICE

    dump = store_text(env)
    assert len([k for k in env.stored_keys() if k.startswith("credentials|")]) == 2
    for secret in (
        ALICE_PASSWORD,
        f"alice:{ALICE_PASSWORD}",
        f"alice\0{ALICE_PASSWORD}",
        base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode(),
        "wrong-password",
    ):
        assert secret not in dump
    assert {key.split("|")[0] for key in env.stored_keys()} == {"credentials"}


async def test_wrong_password_does_not_ride_on_a_cached_right_one(env: Env) -> None:
    assert (await env.cache.verify_credentials("alice", ALICE_PASSWORD, budget())).value == ALICE

    wrong = await env.cache.verify_credentials("alice", ALICE_PASSWORD + "x", budget())
    swapped = await env.cache.verify_credentials("alice" + ALICE_PASSWORD[:1], ALICE_PASSWORD[1:], budget())

    assert (wrong.value, wrong.source) == (None, "gerrit")
    assert (swapped.value, swapped.source) == (None, "gerrit")
    assert (await env.cache.verify_credentials("alice", ALICE_PASSWORD, budget())).source == "cache"


async def test_credential_keys_depend_on_the_secret() -> None:
    a, b = Env(), Env()
    b.cache = CachedGerrit(b.inner, b.store, TTL, stale_if_error=STALE, secret=b"another-secret", clock=b.clock)
    try:
        await a.cache.verify_credentials("alice", ALICE_PASSWORD, budget())
        await b.cache.verify_credentials("alice", ALICE_PASSWORD, budget())
        assert a.stored_keys() != b.stored_keys()
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------------------------------------------------------
# Invalidation: by generations, judged by what is still served from the cache
# ---------------------------------------------------------------------------------------------------------------

FILLED: dict[str, Lookup] = {
    "account alice": lambda c: c.account(account_key_for("alice"), budget()),
    "account alice@": lambda c: c.account(account_key_for("alice@example.com"), budget()),
    "account ALICE@": lambda c: c.account(account_key_for("ALICE@example.com"), budget()),
    "account bob": lambda c: c.account(account_key_for("bob"), budget()),
    "credentials alice": lambda c: c.verify_credentials("alice", ALICE_PASSWORD, budget()),
    "groups alice": lambda c: c.groups(ALICE.id, budget()),
    "groups bob": lambda c: c.groups(BOB.id, budget()),
    "capabilities alice": lambda c: c.capabilities(ALICE.id, budget()),
    "capabilities bob": lambda c: c.capabilities(BOB.id, budget()),
    "access alice build": lambda c: c.check_access("platform/build", ALICE.id, "refs/heads/main", "read", budget()),
    "access bob build": lambda c: c.check_access("platform/build", BOB.id, "refs/heads/main", "read", budget()),
    "access alice web.git": lambda c: c.check_access("web.git", ALICE.id, "refs/heads/main", "read", budget()),
    "change 4711": lambda c: c.change("4711", budget()),
    "change platform/build~4711": lambda c: c.change("platform/build~4711", budget()),
    "change 47110": lambda c: c.change("47110", budget()),
}


async def fill(env: Env) -> None:
    env.inner.accounts["ALICE@example.com"] = ALICE
    env.inner.changes["platform/build~4711"] = env.inner.changes["4711"]
    env.inner.changes["47110"] = ChangeInfo(47110, "other", "main", "NEW", {}, False)
    for lookup in FILLED.values():
        await lookup(env.cache)


async def served_from_cache(env: Env) -> set[str]:
    """Which of :data:`FILLED` the cache still answers (each one is looked up, so run it once, at the end)."""
    return {name for name, lookup in FILLED.items() if (await lookup(env.cache)).source == "cache"}


async def test_filled_lookups_are_all_cached(env: Env) -> None:
    await fill(env)
    assert await served_from_cache(env) == set(FILLED)


ALICE_FACTS = {k for k in FILLED if "alice" in k.lower()}


@pytest.mark.parametrize("query", [str(ALICE.id), "alice", "alice@example.com", "Alice@Example.COM"])
async def test_invalidate_account_by_any_name_drops_everything_about_it(env: Env, query: str) -> None:
    await fill(env)

    assert await env.cache.invalidate(account=query) >= 1

    # Every identity mapping (any claim, any case), her verified password, her groups, capabilities and rights.
    assert await served_from_cache(env) == set(FILLED) - ALICE_FACTS


async def test_invalidate_account_by_a_name_its_cached_answers_do_not_carry(env: Env) -> None:
    await fill(env)
    renamed = Account(ALICE.id, "alice", "alice@new.example.com")
    env.inner.accounts["alice@new.example.com"] = renamed  # Gerrit knows her new email; the cache the old one

    await env.cache.invalidate(account="alice@new.example.com")

    assert await served_from_cache(env) == set(FILLED) - ALICE_FACTS


async def test_invalidate_account_by_name_while_gerrit_is_down_drops_every_account(env: Env) -> None:
    await fill(env)
    env.inner.error = Unavailable("gerrit_timeout", "slow", transient=True)
    await env.cache.invalidate(account="alice")
    env.inner.error = None

    assert await served_from_cache(env) == {"change 4711", "change platform/build~4711", "change 47110"}


@pytest.mark.parametrize("name", ["nobody@example.com", "Alice Smith", "ümlaut@example.com"])
async def test_invalidate_an_account_gerrit_cannot_name_drops_every_account(env: Env, name: str) -> None:
    # No account, several, or a name Gerrit may fold: which id it means is unknown, so no account's answers stay.
    await fill(env)
    await env.cache.invalidate(account=name)
    assert await served_from_cache(env) == {"change 4711", "change platform/build~4711", "change 47110"}


async def test_invalidate_project_drops_every_access_answer_and_change_whatever_the_spelling(env: Env) -> None:
    await fill(env)

    await env.cache.invalidate(project="web")

    # web.git is Gerrit's web; a project's answers also follow from its parents': every project's are dropped.
    assert await served_from_cache(env) == {
        "account alice",
        "account alice@",
        "account ALICE@",
        "account bob",
        "credentials alice",
        "groups alice",
        "groups bob",
    }


async def test_invalidate_change_drops_it_under_every_spelling(env: Env) -> None:
    await fill(env)

    assert await env.cache.invalidate(change="4711") == 1

    assert await served_from_cache(env) == set(FILLED) - {"change 4711", "change platform/build~4711"}


async def test_invalidate_change_by_change_id_drops_every_change(env: Env) -> None:
    await fill(env)
    await env.cache.invalidate(change="I" + "a" * 40)
    assert await served_from_cache(env) == {k for k in FILLED if not k.startswith("change")}


async def test_invalidate_group_drops_memberships_and_what_follows_from_them(env: Env) -> None:
    await fill(env)

    await env.cache.invalidate(group="Developers")

    assert await served_from_cache(env) == {k for k in FILLED if k.startswith(("account", "credentials"))}


async def test_invalidate_everything(env: Env) -> None:
    await fill(env)
    assert await env.cache.invalidate(everything=True) == -1
    assert len(env.store) == 0
    assert await served_from_cache(env) == set()


async def test_invalidate_nothing_named_is_a_no_op(env: Env) -> None:
    await fill(env)
    assert await env.cache.invalidate() == 0
    assert await served_from_cache(env) == set(FILLED)


async def test_an_invalidated_entry_never_comes_back_as_stale(env: Env) -> None:
    await fill(env)
    await env.cache.invalidate(account="alice")
    env.inner.error = Unavailable("gerrit_timeout", "slow", transient=True)

    with pytest.raises(Unavailable):
        await env.cache.groups(ALICE.id, budget())
    assert (await env.cache.groups(BOB.id, budget())).source == "cache"


# ---------------------------------------------------------------------------------------------------------------
# Key construction: values cannot forge tags or collide; long values are digested
# ---------------------------------------------------------------------------------------------------------------


async def test_pipe_in_a_value_cannot_forge_a_tag(env: Env) -> None:
    # A project name carrying "|a=<bob>|" must not make the entry look like one of Bob's facts.
    forged = f"evil|a={BOB.id}|p=platform/build"
    await env.cache.check_access(forged, ALICE.id, "refs/heads/main", "read", budget())
    await env.cache.check_access("platform/build", BOB.id, "refs/heads/main", "read", budget())

    await env.cache.invalidate(account=str(BOB.id))

    assert (await env.cache.check_access(forged, ALICE.id, "refs/heads/main", "read", budget())).source == "cache"
    (key,) = [k for k in env.stored_keys() if "evil" in k]
    assert key.count("|") == 5  # kind + exactly four tags
    assert f"|a={BOB.id}|" not in key


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # a value containing '|' vs. one containing its escape
        (("p|x", "refs/heads/main"), ("p%7Cx", "refs/heads/main")),
        (("p", "refs/heads/a|b"), ("p", "refs/heads/a%7Cb")),
        # shifting text between adjacent tags
        (("p|r=refs/heads/x", "y"), ("p", "refs/heads/x|r=y")),
        # long values are digested: still distinct
        (("p", "refs/heads/" + "x" * 4000), ("p", "refs/heads/" + "x" * 3999 + "y")),
    ],
)
async def test_distinct_lookups_never_share_a_key(env: Env, first: tuple[str, str], second: tuple[str, str]) -> None:
    env.inner.grants = {(first[0], ALICE.id, first[1], "read")}

    allowed = await env.cache.check_access(first[0], ALICE.id, first[1], "read", budget())
    other = await env.cache.check_access(second[0], ALICE.id, second[1], "read", budget())

    assert allowed.value.allowed is True
    assert (other.value.allowed, other.source) == (False, "gerrit")
    assert len(env.stored_keys()) == 2


async def test_keys_and_messages_do_not_grow_with_the_request(env: Env) -> None:
    path = "refs/heads/" + "|" * 8192
    denied = await env.cache.check_access("p" * 2000, ALICE.id, path, "read", budget())
    cached = await env.cache.check_access("p" * 2000, ALICE.id, path, "read", budget())

    assert (denied.value.allowed, cached.source) == (False, "cache")
    (key,) = env.stored_keys()
    assert len(key) <= 160
    assert len(cached.value.message) <= 300


# ---------------------------------------------------------------------------------------------------------------
# Bounded memory, invalidation racing a lookup, reloads
# ---------------------------------------------------------------------------------------------------------------


def entry(value: Any) -> Entry:
    return Entry(value, 1e12, 1e12, Snapshot("", 0), ())


async def test_memory_store_keeps_at_most_max_entries_least_recently_used_first() -> None:
    store = MemoryStore(max_entries=100)
    snap = await store.snapshot()
    for i in range(100):
        await store.write(f"k{i}", Entry(i, 1e12, 1e12, snap, ()), 60)
    assert (await store.read("k0"))[0] is not None  # k0 is now the most recently used
    for i in range(100, 150):
        await store.write(f"k{i}", Entry(i, 1e12, 1e12, snap, ()), 60)

    assert len(store) == 100
    assert (await store.read("k0"))[0] is not None
    assert (await store.read("k1"))[0] is None  # evicted: least recently used
    assert (await store.read("k149"))[0] is not None
    await store.close()


async def test_memory_store_entries_expire_on_the_stores_ttl() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    await store.write("k", Entry(1, 1e12, 1e12, await store.snapshot(), ()), 5)
    now[0] = 4.9
    assert (await store.read("k"))[0] is not None
    now[0] = 5.0
    assert (await store.read("k"))[0] is None
    assert len(store) == 0


async def test_a_stream_of_bogus_credentials_cannot_grow_the_cache_past_its_bound() -> None:
    store = MemoryStore(max_entries=200)
    cache = CachedGerrit(FakeGerrit(), store, TTL, stale_if_error=STALE, secret=SECRET)
    for i in range(2000):
        assert (await cache.verify_credentials(f"user{i}", "guess", budget())).value is None
    assert len(store) <= 200
    await store.close()


async def test_an_answer_fetched_across_an_invalidation_is_not_kept(env: Env) -> None:
    env.inner.gate = asyncio.Event()
    lookup = asyncio.create_task(env.cache.groups(ALICE.id, budget()))
    await asyncio.sleep(0.01)  # the lookup is at Gerrit
    await env.cache.invalidate(group="Developers")  # Gerrit changed meanwhile
    env.inner.groups_of[ALICE.id] = ()
    env.inner.gate.set()
    # The answer may predate the change: never used, not even by its own Check. Gerrit is asked again.
    assert (await lookup).value == ()
    assert env.inner.calls[("groups", ALICE.id)] == 2
    assert (await env.cache.groups(ALICE.id, budget())).source == "cache"  # the later answer is the one kept


async def test_an_answer_overtaken_by_invalidations_each_time_is_an_outage_not_an_answer(env: Env) -> None:
    original = env.inner.groups

    async def groups_while_changing(account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        fact = await original(account_id, deadline)
        await env.cache.invalidate(group="Developers")  # every answer is overtaken
        return fact

    env.inner.groups = groups_while_changing  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await env.cache.groups(ALICE.id, budget())
    assert env.inner.calls[("groups", ALICE.id)] == 3


async def test_a_lookup_starting_after_an_invalidation_does_not_join_one_in_flight(env: Env) -> None:
    env.inner.gate = asyncio.Event()
    before = asyncio.create_task(env.cache.groups(ALICE.id, budget()))
    await asyncio.sleep(0.01)
    await env.cache.invalidate(account=str(ALICE.id))
    after = asyncio.create_task(env.cache.groups(ALICE.id, budget()))
    await asyncio.sleep(0.01)

    assert env.inner.calls[("groups", ALICE.id)] == 2  # its own request, made after the invalidation
    env.inner.gate.set()
    await asyncio.gather(before, after)
    assert (await env.cache.groups(ALICE.id, budget())).source == "cache"  # the later answer is kept


async def test_an_invalidation_through_a_reloaded_cache_stops_the_old_one_storing(env: Env) -> None:
    # After a reload the new cache shares the store (and its generations); the old one is still finishing.
    new = CachedGerrit(env.inner, env.store, TTL, stale_if_error=STALE, secret=SECRET, clock=env.clock)
    env.inner.gate = asyncio.Event()
    lookup = asyncio.create_task(env.cache.groups(ALICE.id, budget()))
    await asyncio.sleep(0.01)  # the old cache's lookup is at Gerrit
    await new.invalidate(group="Developers")  # an event, applied to the cache Checks use now
    env.inner.gate.set()
    await lookup

    assert env.inner.calls[("groups", ALICE.id)] == 2  # the old cache asked again: its first answer was overtaken


async def test_facts_carry_their_scopes_and_a_snapshot_tells_if_they_still_hold(env: Env) -> None:
    async def is_current(snapshot: Snapshot, scopes: tuple[str, ...]) -> bool:
        return await env.store.current(snapshot, tuple({bucket(s) for s in scopes}))

    before = await env.store.snapshot()
    fact = await env.cache.groups(ALICE.id, budget())
    cached = await env.cache.groups(ALICE.id, budget())
    assert "a:1000001" in fact.scopes and fact.scopes == cached.scopes
    assert await is_current(before, fact.scopes)

    await env.cache.invalidate(account="bob")
    assert await is_current(before, fact.scopes)
    await env.cache.invalidate(account="alice")
    assert not await is_current(before, fact.scopes)
    assert await is_current(await env.store.snapshot(), fact.scopes)
