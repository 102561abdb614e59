"""The decision memo: a repeated Check answered with the whole decision made for an identical one, for as long as
everything that decision read is provably unchanged.

A decision is a function of what it read: the rule and its captures (the policy, which a reload replaces together
with this memo), the caller's credential (the ``authorization`` header, ``source.principal`` and Envoy's metadata:
all an identity source may read), the Gerrit facts it looked up, and the time (a token's ``exp``). So an entry is

- keyed by a MAC (keyed BLAKE2b, with a key derived from the process's credential key) of the rule, its captures,
  the method and those credential inputs: the memo never holds a credential, and its keys have one size whatever
  the request;
- valid while none of the generation slots of its facts was bumped since a snapshot taken *before* the decision's
  first lookup (the check a cached fact gets, done once for all of them: one table read, one Redis round trip);
- valid until the earliest of its facts' freshness and the token's ``exp`` (after that a fresh decision would ask
  Gerrit or refuse the token, so the memo lets it).

Only a decision that is a pure function of those inputs is kept: an allow or a 403 whose identity resolved without
error and whose every fact came from Gerrit or a fresh cache entry with recorded scopes. Never an undecided (503)
one, a 401 (the token's validity is the issuer's keys' and the clock's), a 400, or one made from a stale answer
during an outage. A hit is the same decision under a fresh ``decision_id``, marked ``memo``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ._facts import Fact
from ._generations import Snapshot, buckets_of
from ._input import CheckInput
from ._policy import Match
from ._store import MemoryStore, Store, holds
from .errors import PermissionDenied

__all__ = ["DecisionMemo", "MemoEntry", "memoizable"]

if TYPE_CHECKING:  # the engine imports this module
    from ._engine import Decision


@dataclass(frozen=True, slots=True)
class MemoEntry:
    """A remembered decision, the snapshot taken before it started, the slots of its facts and its expiry."""

    decision: Decision
    snapshot: Snapshot
    buckets: tuple[int, ...]
    expires: float


def memoizable(decision: Decision, facts: Sequence[Fact[Any]]) -> bool:
    """Whether ``decision`` is a pure function of its key, its facts and the time (see the module docstring)."""
    error = decision.error
    if error is not None and not (isinstance(error, PermissionDenied) and error.code == "requirement_failed"):
        return False
    if decision.identity.error is not None:
        return False
    return all(f.source != "stale_cache" and f.scopes for f in facts)


def _as_a_hit_sees_it(decision: Decision) -> Decision:
    """``decision`` as a fresh evaluation during the entry's life would show it: every fact it read is then a
    current, fresh cache entry, so what Gerrit answered is shown (trace, identity, metrics, spans) as ``cache``."""
    trace = [replace(t, source="cache") if t.source == "gerrit" else t for t in decision.trace]
    identity = decision.identity
    if identity.account_source == "gerrit":
        principal = identity.principal
        if principal is not None and principal.account_source == "gerrit":
            principal = replace(principal, account_source="cache")
        identity = replace(identity, principal=principal, account_source="cache")
    return replace(decision, trace=trace, identity=identity)


def _token_expiry(decision: Decision) -> float:
    principal = decision.identity.principal
    if principal is None or not principal.claims:
        return math.inf
    exp = principal.claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return math.inf if "exp" not in principal.claims else -math.inf  # an unreadable exp: never kept
    return float(exp)


class DecisionMemo:
    """Decisions of one policy (one :class:`~._engine.Authorizer`), at most ``max_entries``, least recently used
    evicted first. ``clock`` must be the cache's (``time.time``): expiries come from facts and tokens."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._generations = store.generations if isinstance(store, MemoryStore) else None
        # BLAKE2b takes keys of at most 64 bytes: derive one of 32 from the credential key (any length).
        self._secret = hmac.digest(secret, b"gerrit-authz decision memo", hashlib.sha256)
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, MemoEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, match: Match, inp: CheckInput) -> bytes:
        """What the decision reads, digested. The rule object is named by its identity: the memo lives exactly as
        long as the policy holding it."""
        material = repr(
            (
                id(match.rule),
                sorted(match.captures.items()),
                inp.method,
                inp.headers.get("authorization"),
                inp.source_principal,
                inp.metadata or None,
            )
        )
        # Keyed BLAKE2b is a MAC in one pass (RFC 7693 section 3.3), a third cheaper than HMAC-SHA256 here.
        return hashlib.blake2b(material.encode("utf-8", "surrogatepass"), key=self._secret, digest_size=32).digest()

    async def snapshot(self) -> Snapshot:
        """Take before the decision's first lookup."""
        if self._generations is not None:
            return self._generations.snapshot
        return await self._store.snapshot()

    async def _current(self, entry: MemoEntry) -> bool:
        if self._generations is not None:  # the memory store's table, read without a coroutine
            return self._generations.current(entry.snapshot, entry.buckets)
        return await holds(self._store, entry.snapshot, entry.buckets)

    async def get(self, key: bytes) -> Decision | None:
        """The remembered decision when it is still exactly what a fresh one would be, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires or not await self._current(entry):
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry.decision

    def put(self, key: bytes, decision: Decision, snapshot: Snapshot, facts: Sequence[Fact[Any]]) -> bool:
        """Remember ``decision`` (made after ``snapshot`` from ``facts``) if it may be; True when kept."""
        if snapshot.epoch == "" or not memoizable(decision, facts):
            return False
        expires = min((f.fresh_until for f in facts), default=math.inf)
        expires = min(expires, _token_expiry(decision))
        if expires <= self._clock():
            return False
        buckets = buckets_of(s for f in facts for s in f.scopes)
        entries = self._entries
        entries[key] = MemoEntry(_as_a_hit_sees_it(decision), snapshot, buckets, expires)
        entries.move_to_end(key)
        while len(entries) > self._max:
            entries.popitem(last=False)
        return True
