"""Gerrit facts: the typed answers a decision is made of, and the protocol that serves them.

The HTTP client (:mod:`._gerrit`) and the caching layer (:mod:`._cache`) both implement :class:`GerritFacts`;
the cache wraps the client. Every fact is JSON-serialisable through :data:`CODECS`, so a shared Redis never
holds pickles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from ._deadline import Deadline

if TYPE_CHECKING:
    from ._accounts import AccountKey

__all__ = [
    "CODECS",
    "AccessResult",
    "Account",
    "ChangeInfo",
    "Fact",
    "GerritFacts",
    "Group",
    "Invalidator",
    "LabelVotes",
    "Source",
]

T = TypeVar("T")
Source = Literal["gerrit", "cache", "stale_cache"]


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    username: str = ""
    email: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Group:
    id: str  # UUID
    name: str


@dataclass(frozen=True, slots=True)
class AccessResult:
    allowed: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class LabelVotes:
    max: int = 0
    min: int = 0
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class ChangeInfo:
    number: int
    project: str
    branch: str
    status: str
    labels: Mapping[str, LabelVotes]
    submittable: bool | None


@dataclass(frozen=True, slots=True)
class Fact(Generic[T]):
    """A looked-up value and where it came from (for the Explain trace)."""

    value: T
    source: Source = "gerrit"
    detail: str = ""
    #: The generation scopes the answer depends on (set by the cache; see :mod:`._generations`): a memo of a
    #: decision made from it is current only while none of them was bumped.
    scopes: tuple[str, ...] = ()
    #: Until when (the cache's clock, ``time.time``) the answer may be used without asking Gerrit again (set by
    #: the cache; a memoized decision made from it must not outlive it).
    fresh_until: float = float("inf")


class GerritFacts(Protocol):
    """What a decision may ask Gerrit. ``None`` means "no such account/change" (a negative answer)."""

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        """The one active account that carries ``key.value`` in ``key.field``, else None."""
        ...

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]: ...

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]: ...

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]: ...

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]: ...

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]: ...


class Invalidator(Protocol):
    """What drops cached answers: the cache itself, or the live runtime in front of it (after a reload, the cache
    that Checks use now). Admin's Invalidate and the event stream both talk to one of these."""

    async def invalidate(
        self,
        *,
        account: str | None = None,
        project: str | None = None,
        group: str | None = None,
        change: str | None = None,
        everything: bool = False,
    ) -> int: ...


def _account(data: Any) -> Account | None:
    return None if data is None else Account(**data)


def _change(data: Any) -> ChangeInfo | None:
    if data is None:
        return None
    labels = {k: LabelVotes(**v) for k, v in data["labels"].items()}
    return ChangeInfo(**{**data, "labels": labels})


def _dump_change(value: ChangeInfo | None) -> Any:
    if value is None:
        return None
    return {**asdict(value), "labels": {k: asdict(v) for k, v in value.labels.items()}}


#: kind -> (to JSON-able, from JSON-able). Kinds are the cache's kinds.
CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "account": (lambda v: None if v is None else asdict(v), _account),
    "credentials": (lambda v: None if v is None else asdict(v), _account),
    "groups": (lambda v: [asdict(g) for g in v], lambda d: tuple(Group(**g) for g in d)),
    "access": (asdict, lambda d: AccessResult(**d)),
    "capabilities": (sorted, frozenset),
    "change": (_dump_change, _change),
}
