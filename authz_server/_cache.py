"""Caching around :class:`GerritFacts`: per-kind TTLs, negative caching, single-flight, stale-if-error, and
invalidation by generations (:mod:`._generations`).

An entry is fresh until ``fresh_until``; once expired it is refreshed from Gerrit, and only if Gerrit could not be
reached, timed out or answered 5xx/429 (a *transient* :class:`Unavailable`) is the expired answer reused (marked
``stale_cache`` in the trace) until ``stale_until``. A definite answer from Gerrit, whatever it says, replaces the
entry. Negative answers get ``stale_until == fresh_until``: a revoked right is never brought back by an outage.

Every entry depends on scopes: what the request named (a claim's name, an account id, a change number) and what
the answer says (the account's id, username and email; the change's number), plus the kind's broad scopes (every
project's configuration for access answers, capabilities and changes; every group membership; ...). It is used,
fresh or stale, only while none of them was bumped since its lookup *started*: an invalidated entry never comes
back, not even as a stale answer during an outage. A lookup records its snapshot before asking Gerrit, and
concurrent lookups are coalesced only under the same snapshot, so a Check that starts after an invalidation never
joins a lookup that was in flight before it.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ._accounts import AccountKey, account_key
from ._deadline import Deadline
from ._facts import CODECS, AccessResult, Account, ChangeInfo, Fact, GerritFacts, Group
from ._generations import (
    CONFIG,
    EVERY_ACCOUNT,
    EVERY_CHANGE,
    GROUPS,
    Snapshot,
    account_scope,
    buckets_of,
    change_scope,
    name_scope,
)
from ._store import Entry, Store, holds
from .config import TtlConfig
from .errors import Unavailable

__all__ = ["ROOT_PROJECT", "CachedGerrit", "recording_facts", "scopes_of"]

T = TypeVar("T")

#: Every project inherits from it, and global capabilities live in its access rights.
ROOT_PROJECT = "All-Projects"
_RESOLVE_BUDGET = 5.0  # seconds to learn which account a name invalidation means
_REFETCH = 3  # Gerrit requests for one lookup whose answers keep being overtaken by invalidations
_MAX_KEY = 160  # longer keys are digested, so a key's size never grows with the request
_MAX_TEXT = 300  # Gerrit's free-text messages (which may quote the request) are cut to this when cached
_CHANGE_NUMBER = re.compile(r"(?:^|~)([1-9][0-9]{0,9})$")

#: The broad scopes each kind depends on, whatever it is about.
_BASE: dict[str, tuple[str, ...]] = {
    "account": (EVERY_ACCOUNT,),
    "credentials": (EVERY_ACCOUNT,),
    "groups": (EVERY_ACCOUNT, GROUPS),
    "capabilities": (EVERY_ACCOUNT, GROUPS, CONFIG),
    "access": (EVERY_ACCOUNT, GROUPS, CONFIG),
    # Labels and submit requirements come from the project's configuration and its parents'; a submit
    # requirement may name groups (ownerin:, uploaderin:).
    "change": (EVERY_CHANGE, CONFIG, GROUPS),
}


# The facts a decision used, collected while it runs (see recording_facts). A context variable, so lookups run
# concurrently by asyncio.gather (tasks copy the context, and with it this same list) are recorded too.
_USED: contextvars.ContextVar[list[Fact[Any]] | None] = contextvars.ContextVar("gerrit_authz_facts_used", default=None)


@contextmanager
def recording_facts() -> Iterator[list[Fact[Any]]]:
    """Every :class:`Fact` a :class:`CachedGerrit` hands out inside the block (to this task and the tasks it
    starts), in order: what a memoized decision depends on."""
    used: list[Fact[Any]] = []
    token = _USED.set(used)
    try:
        yield used
    finally:
        _USED.reset(token)


def _used(fact: Fact[T]) -> Fact[T]:
    used = _USED.get()
    if used is not None:
        used.append(fact)
    return fact


def _tag(name: str, value: object) -> str:
    # '|' separates tags; keep it out of values so a crafted project name cannot forge a tag. '%' is escaped
    # first so that "a|b" and a literal "a%7Cb" (a valid git ref name) never share a key.
    return f"{name}={str(value).replace('%', '%25').replace('|', '%7C')}|"


def _key(kind: str, *tags: str) -> str:
    key = kind + "|" + "".join(tags)
    if len(key) <= _MAX_KEY:
        return key
    # '#' never starts a tag, so a digested key cannot equal a plain one.
    return f"{kind}|#{hashlib.blake2b(key.encode(), digest_size=20).hexdigest()}"


def _account_scopes(account: Account | None) -> tuple[str, ...]:
    if account is None:
        return ()
    names = {account.username, account.email} - {""}
    return (account_scope(account.id), *(name_scope(n) for n in sorted(names)))


def _change_scopes(change: str) -> tuple[str, ...]:
    m = _CHANGE_NUMBER.search(change)
    return (change_scope(m.group(1)),) if m else ()


def scopes_of(kind: str, requested: tuple[str, ...], value: Any) -> tuple[str, ...]:
    """Every scope an answer of ``kind`` depends on: the kind's broad ones, what the request named, and what the
    answer itself names (Gerrit's canonical account id and names, change number)."""
    found: tuple[str, ...] = ()
    if isinstance(value, Account):
        found = _account_scopes(value)
    elif isinstance(value, ChangeInfo):
        found = (change_scope(value.number),)
    return _BASE[kind] + requested + found


def _trimmed(value: Any) -> Any:
    if isinstance(value, AccessResult) and len(value.message) > _MAX_TEXT:
        return AccessResult(value.allowed, value.message[:_MAX_TEXT])
    return value


class CachedGerrit:
    """A :class:`GerritFacts` that answers from a :class:`Store` before asking ``inner``.

    For a memo built on top (a cached decision, :mod:`._memo`): take the store's snapshot before the decision's
    first lookup, collect the ``scopes`` of every :class:`Fact` it used (:func:`recording_facts`), and reuse it only
    while the store says none of their slots was bumped since.
    """

    def __init__(
        self,
        inner: GerritFacts,
        store: Store,
        ttl: TtlConfig,
        *,
        stale_if_error: float,
        secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._store = store
        self._ttl = ttl
        self._stale = stale_if_error
        self._secret = secret
        self._clock = clock
        self._encodes = store.encodes
        self._inflight: dict[tuple[str, Snapshot], asyncio.Future[Fact[Any]]] = {}

    async def _cached(
        self,
        kind: str,
        key: str,
        requested: tuple[str, ...],
        negative: Callable[[Any], bool],
        fetch: Callable[[], Awaitable[Fact[T]]],
        deadline: Deadline,
    ) -> Fact[T]:
        entry, current, snapshot = await self._store.read(key)
        now = self._clock()
        if entry is not None and current and now < entry.fresh_until:
            value = self._decode(kind, entry.payload)
            return _used(Fact(value, "cache", scopes=scopes_of(kind, requested, value), fresh_until=entry.fresh_until))
        try:
            return _used(await self._single_flight(kind, key, snapshot, requested, negative, fetch, deadline))
        except Unavailable as exc:
            # An entry that is not current was invalidated: it never stands in, not even during an outage (asked
            # again: an invalidation may have landed while Gerrit was being asked).
            usable = exc.transient and entry is not None and current and now < entry.stale_until
            if usable and entry is not None and await holds(self._store, entry.snapshot, entry.buckets):
                value = self._decode(kind, entry.payload)
                stale = Fact(value, "stale_cache", exc.reason, scopes_of(kind, requested, value), fresh_until=now)
                return _used(stale)
            raise

    async def _fetch(
        self, kind: str, requested: tuple[str, ...], snapshot: Snapshot, fetch: Callable[[], Awaitable[Fact[T]]]
    ) -> tuple[Fact[T], Snapshot | None, tuple[int, ...]]:
        """Gerrit's answer, with the snapshot to store it under (None: do not store it) and its slots.

        An answer that an invalidation overtook may predate the change invalidated, so it is never used: it is
        asked again under the new generations, at most :data:`_REFETCH` times.
        """
        for _ in range(_REFETCH):
            fact = await fetch()
            scopes = scopes_of(kind, requested, fact.value)
            buckets = buckets_of(scopes)
            fact = Fact(fact.value, fact.source, fact.detail, scopes)
            if snapshot.epoch == "":
                return fact, None, buckets  # the shared store was unreadable: no invalidation can be told apart
            try:
                if await self._store.current(snapshot, buckets):
                    return fact, snapshot, buckets
            except Unavailable:
                return fact, None, buckets  # as above (and Invalidate itself fails while the store does)
            snapshot = await self._store.snapshot()
        raise Unavailable("gerrit_unavailable", "Gerrit's answer was invalidated while it was fetched", transient=True)

    async def _single_flight(
        self,
        kind: str,
        key: str,
        snapshot: Snapshot,
        requested: tuple[str, ...],
        negative: Callable[[Any], bool],
        fetch: Callable[[], Awaitable[Fact[T]]],
        deadline: Deadline,
    ) -> Fact[T]:
        flight = (key, snapshot)
        # An unreadable store gives every lookup the same unknown snapshot, so joining a lookup then could mean
        # joining a request sent before an invalidation this Check follows: only known snapshots are shared.
        shared = snapshot.epoch != ""
        future = self._inflight.get(flight) if shared else None
        if future is None:
            future = asyncio.get_running_loop().create_future()
            if shared:
                self._inflight[flight] = future
            try:
                fact, stored_under, buckets = await self._fetch(kind, requested, snapshot, fetch)
                is_negative = negative(fact.value)
                ttl = self._ttl.negative if is_negative else getattr(self._ttl, kind)
                now = self._clock()
                fact = Fact(fact.value, fact.source, fact.detail, fact.scopes, fresh_until=now + ttl)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # waiters may all be gone; mark it retrieved
                else:
                    future.cancel()
                raise
            finally:
                if shared:
                    del self._inflight[flight]
            future.set_result(fact)
            if ttl > 0 and stored_under is not None:
                keep = ttl if is_negative else ttl + self._stale
                value = _trimmed(fact.value)
                payload = CODECS[kind][0](value) if self._encodes else value
                await self._store.write(key, Entry(payload, now + ttl, now + keep, stored_under, buckets), keep)
            return fact
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline.remaining(), 0))
        except TimeoutError:
            raise Unavailable("deadline_exceeded", "the Check's budget ran out waiting for Gerrit") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not future.cancelled() or (task is not None and task.cancelling()):
                raise
            # The owner's caller went away (its Check was cancelled), not ours: look it up again.
            return await self._single_flight(kind, key, snapshot, requested, negative, fetch, deadline)

    def _decode(self, kind: str, payload: Any) -> Any:
        return CODECS[kind][1](payload) if self._encodes else payload

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        named = account_scope(key.value) if key.field == "account_id" else name_scope(key.value)
        return await self._cached(
            "account",
            _key("account", _tag("f", key.field), _tag("q", key.value)),
            (named,),
            lambda v: v is None,
            lambda: self._inner.account(key, deadline),
            deadline,
        )

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        # Keyed by an HMAC: the store never sees the credential, and the key is useless without the secret.
        digest = hmac.new(self._secret, f"{username}\0{password}".encode(), hashlib.sha256).hexdigest()
        return await self._cached(
            "credentials",
            _key("credentials", _tag("h", digest)),
            (name_scope(username),),
            lambda v: v is None,
            lambda: self._inner.verify_credentials(username, password, deadline),
            deadline,
        )

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        return await self._cached(
            "groups",
            _key("groups", _tag("a", account_id)),
            (account_scope(account_id),),
            lambda v: False,
            lambda: self._inner.groups(account_id, deadline),
            deadline,
        )

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        key = _key("access", _tag("a", account_id), _tag("p", project), _tag("r", ref), _tag("perm", perm))
        # A denial is cached as a negative answer: a newly granted right takes effect within ttl.negative.
        return await self._cached(
            "access",
            key,
            (account_scope(account_id),),
            lambda v: not v.allowed,
            lambda: self._inner.check_access(project, account_id, ref, perm, deadline),
            deadline,
        )

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        return await self._cached(
            "capabilities",
            _key("capabilities", _tag("a", account_id)),
            (account_scope(account_id),),
            lambda v: False,
            lambda: self._inner.capabilities(account_id, deadline),
            deadline,
        )

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        return await self._cached(
            "change",
            _key("change", _tag("c", change_id)),
            _change_scopes(change_id),
            lambda v: v is None,
            lambda: self._inner.change(change_id, deadline),
            deadline,
        )

    async def _account_scopes(self, account: str) -> set[str]:
        """What invalidating ``account`` (an id, a username or an email) bumps: the name as given, and the one
        account Gerrit says carries it now (its cached answers may predate a rename). When Gerrit cannot name
        exactly one (unreachable, no account, several, a name it folds in ways not checked here), every account:
        an entry keyed by an id it cannot tell must not survive."""
        if account.isdigit():
            return {account_scope(account), name_scope(account)}
        scopes = {name_scope(account)}
        key = account_key("email" if "@" in account else "username", account)
        try:
            found = None if key is None else (await self._inner.account(key, Deadline.after(_RESOLVE_BUDGET))).value
        except Unavailable:
            found = None
        return scopes | (set(_account_scopes(found)) if found is not None else {EVERY_ACCOUNT})

    async def invalidate(
        self,
        *,
        account: str | None = None,
        project: str | None = None,
        group: str | None = None,
        change: str | None = None,
        everything: bool = False,
    ) -> int:
        """Make cached answers miss, on every replica sharing the store, before returning.

        Returns how many scopes were bumped (-1 for everything): entries are not searched, so not counted.
        :class:`Unavailable` when the shared store cannot be updated (the entries may still be served).
        """
        if everything:
            await self._store.bump_all()
            return -1
        scopes: set[str] = set()
        if account is not None:
            scopes |= await self._account_scopes(account)
        if project is not None:
            # Its access answers, those of every project inheriting from it, and its changes (labels and submit
            # requirements): every project's, whatever spelling (web.git, web) they were fetched under.
            scopes.add(CONFIG)
        if group is not None:
            scopes.add(GROUPS)  # memberships are cached per account, so any account may be affected
        if change is not None:
            # A number (or project~number) reaches every spelling through the answer's number; a Change-Id
            # cannot be told apart from its number here, so every change is dropped.
            scopes.update(_change_scopes(change) or (EVERY_CHANGE,))
        if scopes:
            await self._store.bump(buckets_of(scopes))
        return len(scopes)
