"""The ``mtls`` identity source: the client certificate Envoy validated, as ``attributes.source.principal``.

Envoy fills ``source.principal`` only for a peer certificate it verified (the first URI SAN, such as a SPIFFE
ID, else the first DNS SAN, else the subject), so the value is trusted as far as Envoy's TLS settings are. It
must match the configured template; the ``{account}`` capture is then the account value under the same strict
mapping as tokens (:func:`~authz_server._accounts.account_key`). A principal that does not match is no identity
from this source.
"""

from __future__ import annotations

from .._accounts import account_key
from .._deadline import Deadline
from .._input import CheckInput
from ..config import MtlsConfig
from ._types import Principal

__all__ = ["MtlsSource", "match_principal"]

_PLACEHOLDER = "{account}"


def match_principal(template: str | None, principal: str) -> str | None:
    """The ``{account}`` capture of ``principal`` under ``template`` (the whole principal without one), or None.

    The capture is one non-empty path segment: no ``/``, so ``spiffe://corp/ci/{account}`` never matches
    ``spiffe://corp/ci/a/b``.
    """
    if not principal:
        return None
    if template is None:
        return principal
    prefix, _, suffix = template.partition(_PLACEHOLDER)
    if len(principal) <= len(prefix) + len(suffix) or not principal.startswith(prefix):
        return None
    if not principal.endswith(suffix):
        return None
    capture = principal[len(prefix) : len(principal) - len(suffix)]
    return capture if capture and "/" not in capture else None


class MtlsSource:
    """Identity from a verified client certificate (for CI systems and service accounts)."""

    name = "mtls"

    def __init__(self, config: MtlsConfig) -> None:
        self._config = config

    def present(self, inp: CheckInput) -> bool:
        return match_principal(self._config.match, inp.source_principal) is not None

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        capture = match_principal(self._config.match, inp.source_principal)
        return Principal(
            source=self.name,
            subject=inp.source_principal,
            account_key=account_key(self._config.account_field, capture),
        )
