"""Identity: verify the caller with the first configured source whose credential is present, then map it to a
Gerrit account."""

from __future__ import annotations

from collections.abc import Sequence

from .._deadline import Deadline
from .._facts import GerritFacts
from .._input import CheckInput
from ..errors import AuthzError
from ._mtls import MtlsSource
from ._sources import BasicCredentialsSource, EnvoyJwtMetadataSource, JwtSource
from ._types import ANONYMOUS, Identity, IdentitySource, Principal

__all__ = [
    "ANONYMOUS",
    "BasicCredentialsSource",
    "EnvoyJwtMetadataSource",
    "Identity",
    "IdentityResolver",
    "IdentitySource",
    "JwtSource",
    "MtlsSource",
    "Principal",
]


class IdentityResolver:
    """Runs the configured sources in order and looks the principal up in Gerrit."""

    def __init__(self, sources: Sequence[IdentitySource], facts: GerritFacts) -> None:
        self._sources = tuple(sources)
        self._facts = facts

    async def resolve(self, inp: CheckInput, deadline: Deadline) -> Identity:
        """Never raises an :class:`AuthzError`: failures are carried in ``Identity.error``."""
        source = next((s for s in self._sources if s.present(inp)), None)
        if source is None:
            return ANONYMOUS
        principal: Principal | None = None
        try:
            principal = await source.authenticate(inp, deadline)
            if principal.account is not None:
                return Identity(principal, principal.account, principal.account_source)
            key = principal.account_key
            if key is None:
                return Identity(principal, no_account="its token names no usable Gerrit account")
            fact = await self._facts.account(key, deadline)
            if fact.value is None:
                return Identity(
                    principal, account_source=fact.source, no_account=f"no Gerrit account has {key.field} {key.value!r}"
                )
            return Identity(principal, fact.value, fact.source)
        except AuthzError as exc:
            return Identity(principal, error=exc)
