"""Caching around :class:`GerritFacts`: per-kind TTLs, negative caching, single-flight and stale-if-error.

An entry is stored as ``[payload, fresh_until]`` and kept ``stale_if_error`` seconds past its freshness: while
fresh it answers directly; once expired it is refreshed from Gerrit, and only if Gerrit is unavailable is the
expired answer reused (marked ``stale_cache`` in the trace) until that window closes too, after which the
:class:`Unavailable` error surfaces as a 503. Concurrent lookups of one key share a single Gerrit request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._deadline import Deadline
from ._facts import CODECS, AccessResult, Account, ChangeInfo, Fact, GerritFacts, Group
from ._store import Store
from .config import TtlConfig
from .errors import Unavailable

__all__ = ["CachedGerrit"]

T = TypeVar("T")


def _tag(name: str, value: object) -> str:
    # '|' separates tags; keep it out of values so a crafted project name cannot forge a tag. '%' is escaped
    # first so that "a|b" and a literal "a%7Cb" (a valid git ref name) never share a key.
    return f"{name}={str(value).replace('%', '%25').replace('|', '%7C')}|"


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._store = store
        self._ttl = ttl
        self._stale = stale_if_error
        self._secret = secret
        self._clock = clock
        self._encodes = bool(getattr(store, "encodes", True))
        self._inflight: dict[str, asyncio.Future[Fact[Any]]] = {}

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
            if entry is not None and now < entry[1] + self._stale:
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
            ttl = self._ttl.negative if negative(fact.value) else getattr(self._ttl, kind)
            if ttl > 0:
                payload = CODECS[kind][0](fact.value) if self._encodes else fact.value
                await self._store.set(key, [payload, self._clock() + ttl], ttl + self._stale)
                if isinstance(fact.value, Account):
                    await self._remember(key, fact.value, ttl + self._stale)
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
        """Index a fetched account so ``invalidate(account=...)`` finds everything cached for it.

        Names (username, email) map to the id; a verified credential gets a ``credref`` key tagged with the id,
        because the credential's own key (an HMAC) cannot name the account.
        """
        for name in {account.username, account.email} - {""}:
            await self._store.set("alias|" + _tag("q", name), account.id, ttl)
        if key.startswith("credentials|"):
            await self._store.set("credref|" + _tag("a", account.id) + key.removeprefix("credentials|"), 1, ttl)

    def _decode(self, kind: str, payload: Any) -> Any:
        return CODECS[kind][1](payload) if self._encodes else payload

    async def account(self, query: str, deadline: Deadline) -> Fact[Account | None]:
        return await self._cached(
            "account",
            "account|" + _tag("q", query),
            lambda v: v is None,
            lambda: self._inner.account(query, deadline),
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
        if everything:
            await self._store.clear()
            return -1
        removed = 0
        if account is not None:
            account_ids = {account}
            # A username or email names the account through an alias or a cached lookup.
            alias = await self._store.get("alias|" + _tag("q", account))
            if alias is not None:
                account_ids.add(str(alias))
            entry = await self._store.get("account|" + _tag("q", account))
            if entry is not None and (known := self._decode("account", entry[0])) is not None:
                account_ids.add(str(known.id))
            keys = await self._store.keys_tagged(_tag("q", account)[:-1])
            for value in account_ids:
                keys += await self._store.keys_tagged(_tag("a", value)[:-1])
            # A revoked password must stop working now, not when its cached verification expires.
            keys += ["credentials|" + k[k.index("|h=") + 1 :] for k in keys if k.startswith("credref|")]
            removed += await self._store.delete_keys(sorted(set(keys)))
        if project is not None:
            removed += await self._store.delete_tagged(_tag("p", project)[:-1])
        if group is not None:
            # Membership is cached per account, so any account may be affected.
            removed += await self._store.delete_tagged("groups")
        if change is not None:
            removed += await self._store.delete_tagged(_tag("c", change)[:-1])
        return removed
