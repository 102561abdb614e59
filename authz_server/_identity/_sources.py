"""The identity sources: OIDC bearer JWT, Gerrit HTTP credentials, and a JWT Envoy already verified."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .._accounts import account_key
from .._deadline import Deadline
from .._facts import GerritFacts
from .._input import CheckInput
from ..config import EnvoyJwtMetadataConfig, JwtConfig
from ..errors import Unauthenticated
from ._types import Principal
from .jwt import JwtVerifier

__all__ = ["MAX_BASIC_CREDENTIAL", "BasicCredentialsSource", "EnvoyJwtMetadataSource", "JwtSource"]

#: Longer Basic credentials are refused without asking Gerrit (which answers 431 to a huge header).
MAX_BASIC_CREDENTIAL = 4096


def _scheme(inp: CheckInput, scheme: str) -> str | None:
    """The credential after ``authorization: <scheme> `` (case-insensitive scheme), or None."""
    value = inp.headers.get("authorization", "")
    if value[: len(scheme) + 1].lower() == scheme + " ":
        return value[len(scheme) + 1 :].strip()
    return None


def _token_principal(source: str, claims: Mapping[str, Any], config: JwtConfig | EnvoyJwtMetadataConfig) -> Principal:
    """A verified token's principal: its account key, taken strictly from the configured claim and field."""
    if config.account_field == "email" and config.require_verified_email:
        verified = claims.get("email_verified")
        # Absent: many IdPs only send it for addresses they did not verify. Some send the string "true".
        if verified is not None and verified is not True and verified != "true":
            raise Unauthenticated("invalid_token", "the token's email is not verified (email_verified)")
    return Principal(
        source=source,
        subject=str(claims.get("sub", "")),
        account_key=account_key(config.account_field, claims.get(config.account_claim)),
        claims=claims,
    )


class JwtSource:
    name = "jwt"

    def __init__(self, config: JwtConfig, verifier: JwtVerifier) -> None:
        self._config = config
        self._verifier = verifier

    def present(self, inp: CheckInput) -> bool:
        return _scheme(inp, "bearer") is not None

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        token = _scheme(inp, "bearer") or ""
        claims = await self._verifier.verify(token, deadline)
        return _token_principal(self.name, claims, self._config)


class BasicCredentialsSource:
    """``authorization: Basic`` checked by Gerrit itself (``GET /a/accounts/self`` as the caller)."""

    name = "gerrit_http_credentials"

    def __init__(self, facts: GerritFacts) -> None:
        self._facts = facts

    def present(self, inp: CheckInput) -> bool:
        return _scheme(inp, "basic") is not None

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        credential = _scheme(inp, "basic") or ""
        if len(credential) > MAX_BASIC_CREDENTIAL:
            raise Unauthenticated("invalid_credentials", "Basic credentials too large")
        try:
            decoded = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("invalid_credentials", "malformed Basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep or not username or not password:
            raise Unauthenticated("invalid_credentials", "malformed Basic credentials")
        fact = await self._facts.verify_credentials(username, password, deadline)
        if fact.value is None:
            raise Unauthenticated("invalid_credentials", "Gerrit refused the username/password")
        return Principal(self.name, fact.value.username or username, account=fact.value, account_source=fact.source)


class EnvoyJwtMetadataSource:
    """A payload Envoy's jwt_authn filter verified and put in ``metadata_context`` (``payload_in_metadata``)."""

    name = "envoy_jwt_metadata"

    def __init__(self, config: EnvoyJwtMetadataConfig) -> None:
        self._config = config

    def _payload(self, inp: CheckInput) -> Mapping[str, Any] | None:
        payload = inp.metadata.get(self._config.filter, {}).get(self._config.payload_key)
        return payload if isinstance(payload, Mapping) else None

    def present(self, inp: CheckInput) -> bool:
        return self._payload(inp) is not None

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        claims = self._payload(inp) or {}
        if self._config.issuer is not None and claims.get("iss") != self._config.issuer:
            raise Unauthenticated("invalid_token", "JWT from Envoy metadata has an unexpected issuer")
        return _token_principal(self.name, claims, self._config)
