"""Verify OIDC bearer JWTs against the issuer's published keys (JWKS).

Keys come from OIDC discovery (``{issuer}/.well-known/openid-configuration`` -> ``jwks_uri``) unless
``jwks_url`` is configured, fetched with the service's ``httpx.AsyncClient`` (never PyJWT's blocking
``PyJWKClient``). They are cached for ``jwks_ttl``; an unknown ``kid`` triggers a refetch at most once per
``jwks_min_refresh_interval``, concurrent refetches share one request, and a failed refresh keeps the keys
already cached.

Everything an attacker controls is checked before any crypto: size, shape, ``alg`` (asymmetric and configured
only), no ``crit``. Time claims (``exp``, ``nbf``, ``iat``) are checked against the injected clock, so the
claims cache and the crypto path agree on when a token expires. Reasons never contain the token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
import jwt

from .._deadline import Deadline
from ..config import JwtConfig
from ..errors import AuthzError, Unauthenticated, Unavailable

__all__ = ["JwtVerifier"]

_log = logging.getLogger(__name__)

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9_+-]{1,20}")
_HTTP_TIMEOUT = 5.0
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidKeyError, "unusable signing key"),
    (jwt.DecodeError, "malformed token"),
)


def _invalid(reason: str) -> Unauthenticated:
    return Unauthenticated("invalid_token", reason)


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    algorithms: frozenset[str]  # the token algorithms this key may verify
    key: Any  # a cryptography public key object


def _parse_key(data: object) -> _Key | None:
    """A usable signature-verification key, or None (skips encryption, secret, private and odd keys)."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig" or "d" in data:
        return None
    ops = data.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty, crv, alg = data.get("kty"), data.get("crv"), data.get("alg")
    if kty == "RSA":
        algorithms = _RSA_ALGS
    elif kty == "EC" and isinstance(crv, str) and crv in _EC_ALGS:
        algorithms = frozenset({_EC_ALGS[crv]})
    elif kty == "OKP" and crv in _OKP_CURVES:
        algorithms = frozenset({"EdDSA"})
    else:
        return None
    if alg is not None:
        if alg not in algorithms:
            return None
        algorithms = frozenset({alg})
    try:
        parsed = jwt.PyJWK(data, next(iter(sorted(algorithms))))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    kid = data.get("kid")
    return _Key(kid if isinstance(kid, str) else None, algorithms, parsed.key)


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError, JSONDecodeError: ValueErrors
        raise _invalid("malformed token") from None
    if not isinstance(header, dict):
        raise _invalid("malformed token")
    return header


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"claim {name} is not a number")
    return float(value)


def _valid_until(claims: Mapping[str, Any], now: float, leeway: float) -> float:
    """Check exp/nbf/iat at ``now``; returns the time until which the token stays valid."""
    exp = _number(claims, "exp")
    if exp is None:
        raise _invalid("missing claim exp")
    if now >= exp + leeway:
        raise _invalid("token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise _invalid("token not yet valid")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise _invalid("token issued in the future")
    return exp + leeway


def _check_lifetime(claims: Mapping[str, Any], maximum: float | None) -> None:
    """Short-lived tokens only: with ``max_token_lifetime`` set, ``iat`` is required and ``exp - iat`` bounded."""
    if maximum is None:
        return
    iat, exp = _number(claims, "iat"), _number(claims, "exp")
    if iat is None:
        raise _invalid("missing claim iat (required by max_token_lifetime)")
    if exp is not None and exp - iat > maximum:
        raise _invalid(f"token lifetime {exp - iat:.0f}s exceeds max_token_lifetime {maximum:.0f}s")


def _reason(exc: Exception) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    return next((reason for cls, reason in _REASONS if isinstance(exc, cls)), "invalid token")


class JwtVerifier:
    """Verifies bearer JWTs of one issuer; share one instance (it holds the key and claims caches)."""

    def __init__(
        self,
        config: JwtConfig,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        claims_cache_size: int = 10_000,
    ) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        self._audiences = list(config.audiences)
        self._algorithms = frozenset(config.algorithms)
        self._jwks_uri: str | None = config.jwks_url
        self._keys: tuple[_Key, ...] | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._claims: OrderedDict[bytes, tuple[Mapping[str, Any], float]] = OrderedDict()
        self._claims_cache_size = claims_cache_size
        self._min_refresh = config.jwks_min_refresh_interval

    async def verify(self, token: str, deadline: Deadline) -> Mapping[str, Any]:
        """The verified claims (read-only); raises Unauthenticated("invalid_token") or Unavailable."""
        if len(token) > self._config.max_token_bytes:
            raise _invalid("token too large")
        if not token.isascii() or not _SHAPE.fullmatch(token):
            raise _invalid("malformed token")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._claims.get(digest)
        if cached is not None:
            if self._clock() < cached[1]:
                self._claims.move_to_end(digest)
                return cached[0]
            del self._claims[digest]

        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = alg if isinstance(alg, str) and _PRINTABLE_ALG.fullmatch(alg) else "?"
            raise _invalid(f"algorithm {shown} not allowed")
        if "crit" in header:
            raise _invalid("critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed token")

        keys = await self._keys_for(kid, deadline)
        if not keys:
            raise _invalid(
                "unknown signing key" if kid is not None else "token has no kid, the issuer has several keys"
            )
        fitting = [k for k in keys if alg in k.algorithms]
        if not fitting:
            raise _invalid(f"signing key does not fit algorithm {alg}")
        claims = MappingProxyType(self._decode(token, fitting[0], alg))
        _check_lifetime(claims, self._config.max_token_lifetime)
        valid_until = _valid_until(claims, self._clock(), self._config.leeway)
        self._claims[digest] = (claims, valid_until)
        if len(self._claims) > self._claims_cache_size:
            self._claims.popitem(last=False)
        return claims

    def _decode(self, token: str, key: _Key, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audiences,
                issuer=self._config.issuer,
                leeway=self._config.leeway,
                # Time claims are checked by _valid_until against self._clock (shared with the claims cache).
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except Exception as exc:  # PyJWT and cryptography errors alike: never allow on error
            raise _invalid(_reason(exc)) from None

    # -- keys ------------------------------------------------------------------------------------------------

    def _select(self, kid: str | None) -> list[_Key]:
        keys = self._keys or ()
        if kid is None:
            return list(keys) if len(keys) == 1 else []
        return [k for k in keys if k.kid == kid]

    async def _keys_for(self, kid: str | None, deadline: Deadline) -> list[_Key]:
        if self._keys is None or self._clock() - self._fetched_at >= self._config.jwks_ttl:
            await self._refresh(deadline)
        found = self._select(kid)
        if not found and kid is not None:  # maybe the issuer rotated its keys
            await self._refresh(deadline)
            found = self._select(kid)
        return found

    async def _refresh(self, deadline: Deadline) -> None:
        """Refetch the keys (rate-limited, coalesced). Raises Unavailable only when no keys are cached."""
        if self._inflight is None:
            now = self._clock()
            # Without any key every request fails, so a failed first fetch is retried sooner (at most 1/s).
            interval = self._min_refresh if self._keys is not None else min(self._min_refresh, 1.0)
            if self._last_attempt is not None and now - self._last_attempt < interval:
                if self._keys is None:
                    raise Unavailable("jwks_unavailable", "the issuer's keys could not be fetched recently")
                return
            if deadline.remaining() <= 0:
                if self._keys is None:
                    raise Unavailable("jwks_unavailable", "no time left to fetch the issuer's keys")
                return
            self._last_attempt = now
            self._inflight = asyncio.ensure_future(self._fetch(deadline))
            self._inflight.add_done_callback(self._fetch_done)
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), max(deadline.remaining(), 0.0))
        except Exception as exc:
            if self._keys is not None:
                return  # keep using the cached keys (the failure is logged once, in _fetch_done)
            if isinstance(exc, AuthzError):
                raise Unavailable(exc.code, exc.reason) from None  # a fresh error per waiter
            raise Unavailable("jwks_unavailable", "timed out fetching the issuer's keys") from None

    def _fetch_done(self, task: asyncio.Future[None]) -> None:
        self._inflight = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            reason = exc.reason if isinstance(exc, AuthzError) else type(exc).__name__
            _log.warning("cannot refresh signing keys of %s: %s", self._config.issuer, reason)

    async def _fetch(self, deadline: Deadline) -> None:
        try:
            if self._jwks_uri is None:
                discovery = self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = await self._get_json(discovery, "discovery document", deadline)
                if doc.get("issuer") != self._config.issuer:
                    raise Unavailable("jwks_unavailable", "the discovery document names a different issuer")
                uri = doc.get("jwks_uri")
                if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                    raise Unavailable("jwks_unavailable", "the discovery document has no valid jwks_uri")
                self._jwks_uri = uri
            doc = await self._get_json(self._jwks_uri, "JWKS", deadline)
            raw = doc.get("keys")
            keys = tuple(k for k in map(_parse_key, raw if isinstance(raw, list) else []) if k is not None)
            if not keys:
                raise Unavailable("jwks_unavailable", "the issuer's JWKS has no usable signing key")
        except Unavailable:
            if self._config.jwks_url is None:
                self._jwks_uri = None  # rediscover next time
            raise
        self._keys = keys
        self._fetched_at = self._clock()

    async def _get_json(self, url: str, what: str, deadline: Deadline) -> dict[str, Any]:
        timeout = deadline.bound(_HTTP_TIMEOUT)
        if timeout <= 0:
            raise Unavailable("jwks_unavailable", f"no time left to fetch the issuer's {what}")
        try:
            response = await self._http.get(url, timeout=timeout, headers={"accept": "application/json"})
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = f"cannot fetch the issuer's {what}: {type(exc).__name__}"
            raise Unavailable("jwks_unavailable", reason) from None
        if response.status_code != 200:
            raise Unavailable("jwks_unavailable", f"the issuer's {what} answered HTTP {response.status_code}")
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Unavailable("jwks_unavailable", f"the issuer's {what} is not a JSON object")
        return doc
