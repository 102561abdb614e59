"""Who is calling: the principal a credential proves, and the Gerrit account it maps to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from .._accounts import AccountKey
from .._deadline import Deadline
from .._facts import Account, Source
from .._input import CheckInput
from ..errors import AuthzError

__all__ = ["ANONYMOUS", "Identity", "IdentitySource", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller, before the Gerrit account lookup."""

    source: str  # jwt | gerrit_http_credentials | envoy_jwt_metadata | mtls
    subject: str
    account_key: AccountKey | None = None  # looked up as a Gerrit account
    account: Account | None = None  # already known (Gerrit verified the credential itself)
    account_source: Source | None = None
    #: a verified token's claims (empty for Basic and mTLS: the ``claim`` requirement needs a token)
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Identity:
    """The outcome of identity resolution: anonymous, a principal (with or without account), or an error."""

    principal: Principal | None = None
    account: Account | None = None
    account_source: Source | None = None
    error: AuthzError | None = None
    #: why an authenticated principal has no Gerrit account (for the deny reason and the trace)
    no_account: str = ""

    @property
    def authenticated(self) -> bool:
        return self.principal is not None and self.error is None


ANONYMOUS = Identity()


class IdentitySource(Protocol):
    """One configured way to authenticate a caller."""

    name: str

    def present(self, inp: CheckInput) -> bool:
        """Whether this source's credential is in the request (the first present source decides)."""
        ...

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        """Verify the credential; raises Unauthenticated (bad credential) or Unavailable."""
        ...
