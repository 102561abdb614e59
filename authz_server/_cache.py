"""Caching around :class:`GerritFacts`: per-kind TTLs, negative caching, single-flight and stale-if-error.

An entry is stored as ``[payload, fresh_until, stale_until]``. While fresh it answers directly; once expired it
is refreshed from Gerrit, and only if Gerrit could not be reached, timed out or answered 5xx/429 (a *transient*
:class:`Unavailable`) is the expired answer reused (marked ``stale_cache`` in the trace) until ``stale_until``,
after which the error surfaces as a 503. A definite answer from Gerrit, whatever it says, replaces the entry.
Negative answers get ``stale_until == fresh_until``: a revoked right is never brought back by an outage.
Concurrent lookups of one key share a single Gerrit request.

Invalidation is complete. Every entry about an account (its identity mappings and verified credentials, whose
keys cannot name it) has a ``ref|a=ID|`` entry pointing at it; a change cached under one spelling
(``project~12``, a Change-Id) has a ``ref|n=12|`` one. A project's access answers are dropped with those of
every project inheriting from it, walking parents learned from Gerrit at invalidation time (never on the Check
path); when a parent cannot be learned the answers are dropped anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._accounts import AccountKey
from ._deadline import Deadline
from ._facts import CODECS, AccessResult, Account, ChangeInfo, Fact, GerritFacts, Group, ProjectTree
from ._store import Store
from .config import TtlConfig
from .errors import Unavailable

__all__ = ["ROOT_PROJECT", "CachedGerrit", "Generation"]

T = TypeVar("T")

#: Every project inherits from it, and global capabilities live in its access rights.
ROOT_PROJECT = "All-Projects"
_MAX_DEPTH = 64  # Gerrit refuses deeper trees long before this; a longer walk is a loop
_INVALIDATE_BUDGET = 10.0  # seconds for the parent lookups of one invalidation


def _tag(name: str, value: object) -> str:
    # '|' separates tags; keep it out of values so a crafted project name cannot forge a tag. '%' is escaped
    # first so that "a|b" and a literal "a%7Cb" (a valid git ref name) never share a key.
    return f"{name}={str(value).replace('%', '%25').replace('|', '%7C')}|"


def _tag_value(key: str, name: str) -> str | None:
    """The value of tag ``name`` in ``key`` (the inverse of :func:`_tag`)."""
    start = key.find(f"|{name}=")
    if start < 0:
        return None
    start += len(name) + 2
    return key[start : key.index("|", start)].replace("%7C", "|").replace("%25", "%")


class Generation:
    """How many invalidations a store has seen (see :attr:`CachedGerrit.generation`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class CachedGerrit:
    """A :class:`GerritFacts` that answers from a :class:`Store` before asking ``inner``."""

    def __init__(
        self,
        inner: GerritFacts,
        store: Store,
        ttl: TtlConfig,
        *,
        stale_if_error: float,
        secret: bytes,
        tree: ProjectTree | None = None,
        clock: Callable[[], float] = time.time,
        generation: Generation | None = None,
    ) -> None:
        """``tree`` tells project parents for invalidation (the Gerrit client); without it invalidating a
        project drops the access answers of every other project too."""
        self._inner = inner
        self._tree = tree
        self._store = store
        self._ttl = ttl
        self._stale = stale_if_error
        self._secret = secret
        self._clock = clock
        self._encodes = bool(getattr(store, "encodes", True))
        self._inflight: dict[str, asyncio.Future[Fact[Any]]] = {}
        # Bumped by every invalidation: an answer fetched before one is handed out but never stored, since
        # Gerrit may have changed after it answered. Shared by every cache over the same store (a reload's new
        # cache and the old one still finishing its Checks).
        self.generation = generation or Generation()

    async def _cached(
        self,
        kind: str,
        key: str,
        negative: Callable[[Any], bool],
        fetch: Callable[[], Awaitable[Fact[T]]],
        deadline: Deadline,
    ) -> Fact[T]:
        entry = await self._store.get(key)
        now = self._clock()
        if entry is not None and now < entry[1]:
            return Fact(self._decode(kind, entry[0]), "cache")
        try:
            return await self._single_flight(kind, key, negative, fetch, deadline)
        except Unavailable as exc:
            # Entries of an older layout ([payload, fresh_until]) carry no stale window.
            if exc.transient and entry is not None and len(entry) > 2 and now < entry[2]:
                return Fact(self._decode(kind, entry[0]), "stale_cache", detail=exc.reason)
            raise

    async def _single_flight(
        self,
        kind: str,
        key: str,
        negative: Callable[[Any], bool],
        fetch: Callable[[], Awaitable[Fact[T]]],
        deadline: Deadline,
    ) -> Fact[T]:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            epoch = self.generation.value
            try:
                fact = await fetch()
            except BaseException as exc:
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()  # waiters may all be gone; mark it retrieved
                else:
                    future.cancel()
                raise
            finally:
                del self._inflight[key]
            future.set_result(fact)
            is_negative = negative(fact.value)
            ttl = self._ttl.negative if is_negative else getattr(self._ttl, kind)
            if ttl > 0 and epoch == self.generation.value:
                keep = ttl if is_negative else ttl + self._stale
                payload = CODECS[kind][0](fact.value) if self._encodes else fact.value
                now = self._clock()
                await self._store.set(key, [payload, now + ttl, now + keep], keep)
                if isinstance(fact.value, Account):
                    await self._remember(key, fact.value, keep)
                elif isinstance(fact.value, ChangeInfo) and _tag_value(key, "c") != str(fact.value.number):
                    await self._refer(_tag("n", fact.value.number), key, keep)
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
            return await self._single_flight(kind, key, negative, fetch, deadline)

    async def _remember(self, key: str, account: Account, ttl: float) -> None:
        """Index a fetched account so ``invalidate(account=...)`` finds everything cached for it: its names
        (username, email) map to the id, and the entry itself (an identity mapping keyed by the claim, or a
        credential keyed by an HMAC) is referred to under the id."""
        for name in {account.username, account.email.lower()} - {""}:
            await self._store.set("alias|" + _tag("q", name), account.id, ttl)
        await self._refer(_tag("a", account.id), key, ttl)

    async def _refer(self, tag: str, key: str, ttl: float) -> None:
        """Make ``key`` reachable from ``tag`` (a ``ref|`` entry whose value is the key)."""
        await self._store.set("ref|" + tag + _tag("k", key), key, ttl)

    async def _referred(self, tag: str) -> list[str]:
        """The ``ref|`` entries carrying ``tag`` and the keys they point at."""
        refs = [k for k in await self._store.keys_tagged(tag) if k.startswith("ref|")]
        targets = [t for t in [await self._store.get(r) for r in refs] if isinstance(t, str)]
        return refs + targets

    def _decode(self, kind: str, payload: Any) -> Any:
        return CODECS[kind][1](payload) if self._encodes else payload

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        return await self._cached(
            "account",
            "account|" + _tag("f", key.field) + _tag("q", key.value),
            lambda v: v is None,
            lambda: self._inner.account(key, deadline),
            deadline,
        )

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        # Keyed by an HMAC: the store never sees the credential, and the key is useless without the secret.
        digest = hmac.new(self._secret, f"{username}\0{password}".encode(), hashlib.sha256).hexdigest()
        return await self._cached(
            "credentials",
            "credentials|" + _tag("h", digest),
            lambda v: v is None,
            lambda: self._inner.verify_credentials(username, password, deadline),
            deadline,
        )

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        return await self._cached(
            "groups",
            "groups|" + _tag("a", account_id),
            lambda v: False,
            lambda: self._inner.groups(account_id, deadline),
            deadline,
        )

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        key = "access|" + _tag("a", account_id) + _tag("p", project) + _tag("r", ref) + _tag("perm", perm)
        # A denial is cached as a negative answer: a newly granted right takes effect within ttl.negative.
        return await self._cached(
            "access",
            key,
            lambda v: not v.allowed,
            lambda: self._inner.check_access(project, account_id, ref, perm, deadline),
            deadline,
        )

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        return await self._cached(
            "capabilities",
            "capabilities|" + _tag("a", account_id),
            lambda v: False,
            lambda: self._inner.capabilities(account_id, deadline),
            deadline,
        )

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        return await self._cached(
            "change",
            "change|" + _tag("c", change_id),
            lambda v: v is None,
            lambda: self._inner.change(change_id, deadline),
            deadline,
        )

    async def _invalidate_account(self, account: str) -> int:
        account_ids = {account}
        # A username or email names the account through an alias, a cached identity mapping or both.
        for name in {account, account.lower()}:
            alias = await self._store.get("alias|" + _tag("q", name))
            if alias is not None:
                account_ids.add(str(alias))
        keys = await self._store.keys_tagged(_tag("q", account)[:-1])
        for key in keys:
            entry = await self._store.get(key) if key.startswith("account|") else None
            if entry is not None and (known := self._decode("account", entry[0])) is not None:
                account_ids.add(str(known.id))
        for value in account_ids:
            keys += await self._store.keys_tagged(_tag("a", value)[:-1])
            # Identity mappings and credentials (a revoked password must stop working now, not at its TTL).
            keys += await self._referred(_tag("a", value)[:-1])
        return await self._store.delete_keys(sorted(set(keys)))

    async def _invalidate_project(self, project: str) -> int:
        if project == ROOT_PROJECT:
            keys = await self._store.keys_tagged("access") + await self._store.keys_tagged("capabilities")
            keys += await self._store.keys_tagged("parent")
            return await self._store.delete_keys(sorted(set(keys)))
        # Its own answers, and its cached parent (an access change may have moved it in the tree; not counted).
        own = await self._store.keys_tagged(_tag("p", project)[:-1])
        removed = await self._store.delete_keys([k for k in own if not k.startswith("parent|")])
        await self._store.delete_keys([k for k in own if k.startswith("parent|")])
        by_project: dict[str, list[str]] = {}
        for key in await self._store.keys_tagged("access"):
            name = _tag_value(key, "p")
            if name is not None:
                by_project.setdefault(name, []).append(key)
        deadline = Deadline.after(_INVALIDATE_BUDGET)
        parents: dict[str, str | None] = {}
        doomed = [
            key
            for name, keys in by_project.items()
            if await self._inherits(name, project, parents, deadline)
            for key in keys
        ]
        return removed + await self._store.delete_keys(doomed)

    async def _inherits(self, name: str, ancestor: str, parents: dict[str, str | None], deadline: Deadline) -> bool:
        """Whether ``name`` inherits from ``ancestor``; True when that cannot be told (drop rather than keep)."""
        for _ in range(_MAX_DEPTH):
            if name == ROOT_PROJECT:
                return False
            if name not in parents:
                try:
                    parents[name] = await self._parent(name, deadline)
                except Unavailable:
                    return True
            parent = parents[name]
            if parent is None:
                return False
            if parent == ancestor:
                return True
            name = parent
        return True

    async def _parent(self, project: str, deadline: Deadline) -> str | None:
        if self._tree is None:
            raise Unavailable("gerrit_unavailable", "no project tree to ask")
        key = "parent|" + _tag("p", project)
        entry = await self._store.get(key)
        if entry is not None:
            return entry[0] if isinstance(entry, list) else None
        epoch = self.generation.value
        parent = await self._tree.project_parent(project, deadline)
        ttl = self._ttl.access
        if ttl > 0 and epoch == self.generation.value:  # a reparenting event may have landed meanwhile
            await self._store.set(key, [parent], ttl)
        return parent

    async def invalidate(
        self,
        *,
        account: str | None = None,
        project: str | None = None,
        group: str | None = None,
        change: str | None = None,
        everything: bool = False,
    ) -> int:
        """Drop cached answers; returns how many entries were removed (-1 when the whole store was cleared)."""
        self.generation.value += 1
        if everything:
            await self._store.clear()
            return -1
        removed = 0
        if account is not None:
            removed += await self._invalidate_account(account)
        if project is not None:
            removed += await self._invalidate_project(project)
        if group is not None:
            # Membership is cached per account, so any account may be affected.
            removed += await self._store.delete_tagged("groups")
        if change is not None:
            keys = await self._store.keys_tagged(_tag("c", change)[:-1])
            keys += await self._referred(_tag("n", change)[:-1])
            removed += await self._store.delete_keys(sorted(set(keys)))
        return removed
