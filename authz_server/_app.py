"""Wiring: one function builds every component from a :class:`Config` (dependencies in, nothing global)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from ._cache import CachedGerrit
from ._engine import Authorizer
from ._gerrit import GerritClient, make_http_client
from ._identity import (
    BasicCredentialsSource,
    EnvoyJwtMetadataSource,
    IdentityResolver,
    IdentitySource,
    JwtSource,
    MtlsSource,
)
from ._identity.jwt import JwtVerifier
from ._memo import DecisionMemo
from ._opstats import RotationStats
from ._policy import Policy
from ._redis_conn import RedisConnection
from ._response import challenge_schemes
from ._secrets import EnvSecret, Secret, SecretFile, read_secret_file
from ._store import Store, make_store
from ._trust import TrustFiles
from .config import Config

if TYPE_CHECKING:
    from ._telemetry import Tracing

__all__ = ["Components", "build_components", "credential_key", "gerrit_trust", "new_store", "service_secret"]


@dataclass
class Components:
    config: Config
    authorizer: Authorizer
    cache: CachedGerrit
    store: Store
    http: httpx.AsyncClient
    credential_key: bytes = b""
    stats: RotationStats = field(default_factory=RotationStats)
    tracing: Tracing | None = None  # built once per process (see _server.build_server), kept across reloads
    # Clients of the IdPs that do not share Gerrit's trust (closed with these components, never shared).
    idp_http: list[httpx.AsyncClient] = field(default_factory=list)

    async def aclose(self) -> None:
        await self.http.aclose()
        for client in self.idp_http:
            await client.aclose()
        await self.store.close()


def gerrit_trust(config: Config) -> tuple[object, ...]:
    """What Gerrit's HTTP client depends on: a reload keeps the client only while this stays the same."""
    g = config.gerrit
    return (g.max_connections, g.verify_tls, g.ca_file, g.client_cert_file, g.client_key_file)


def new_store(config: Config) -> Store:
    """The configured cache store (Redis with its TLS trust and credentials)."""
    cache = config.cache
    return make_store(
        cache.backend,
        redis_url=cache.redis_url,
        namespace=cache.namespace,
        max_entries=cache.max_entries,
        redis_connection=RedisConnection.from_config(cache) if cache.backend == "redis" else None,
    )


def service_secret(config: Config, stats: RotationStats | None = None) -> Secret:
    """The service account's password as a live :class:`Secret` (a file is re-read when it changes)."""
    gerrit = config.gerrit
    if gerrit.password_file is not None:
        return SecretFile(gerrit.password_file, "gerrit.password_file", stats)
    assert gerrit.password_env is not None
    return EnvSecret(gerrit.password_env)


def credential_key(config: Config) -> bytes:
    """The key credentials are cached under: from ``cache.credential_key_file``, else random for this process.

    It must not come from the service password (that rotates); replicas sharing Redis share the key file.
    """
    path = config.cache.credential_key_file
    if path is None:
        return os.urandom(32)
    return b"gerrit-authz credential cache v2\0" + read_secret_file(path, "cache.credential_key_file").encode()


def build_components(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: Store | None = None,
    http: httpx.AsyncClient | None = None,
    key: bytes | None = None,
    stats: RotationStats | None = None,
    tracing: Tracing | None = None,
) -> Components:
    """Everything a decision needs. ``transport`` and ``store`` are seams for tests; ``http``, ``store`` (with
    its generations), ``key`` and ``stats`` are also how a reload keeps what it may keep. With ``tracing``,
    identity verification and every HTTP request to Gerrit or a JWKS are child spans of the Check."""
    stats = stats or RotationStats()
    secret = service_secret(config, stats)
    key = key or credential_key(config)
    g = config.gerrit
    # Built (so checked) even when a reload keeps the client: files that no longer load are a configuration error.
    # Followed as they change: a CA removed from the bundle stops being trusted.
    trust = None
    if g.ca_file is not None or g.client_cert_file is not None:
        trust = TrustFiles(
            "gerrit", verify=g.verify_tls, ca_file=g.ca_file, cert_file=g.client_cert_file, key_file=g.client_key_file
        )
    if http is None:
        http = make_http_client(max_connections=g.max_connections, verify=trust or g.verify_tls, transport=transport)
    if tracing is not None:
        tracing.instrument(http)
    client = GerritClient(
        config.gerrit.url, config.gerrit.username, secret, http, timeout=config.gerrit.timeout, stats=stats
    )
    store = store or new_store(config)
    cache = CachedGerrit(
        client,
        store,
        config.cache.ttl,
        stale_if_error=config.cache.stale_if_error,
        secret=key,
    )
    sources: list[IdentitySource] = []
    idp_http: list[httpx.AsyncClient] = []
    # An IdP shares Gerrit's client only while both use the default trust: it never inherits gerrit.ca_file,
    # Gerrit's client certificate or verify_tls: false.
    gerrit_default = trust is None and g.verify_tls is True
    for i, entry in enumerate(config.identity):
        if entry.jwt is not None:
            idp = http
            if entry.jwt.ca_file is not None or not gerrit_default:
                ca_file = entry.jwt.ca_file
                idp_trust = TrustFiles(f"identity[{i}].jwt", ca_file=ca_file) if ca_file is not None else None
                idp = make_http_client(max_connections=10, verify=idp_trust or True, transport=transport)
                idp_http.append(idp)
            sources.append(JwtSource(entry.jwt, JwtVerifier(entry.jwt, idp)))
        elif entry.gerrit_http_credentials is not None:
            sources.append(BasicCredentialsSource(cache))
        elif entry.envoy_jwt_metadata is not None:
            sources.append(EnvoyJwtMetadataSource(entry.envoy_jwt_metadata))
        elif entry.mtls is not None:
            sources.append(MtlsSource(entry.mtls))
    if tracing is not None:
        sources = [tracing.traced_source(s) for s in sources]
    # The memo belongs to this policy: a reload builds a new one (nothing remembered survives a policy change).
    memo = DecisionMemo(store, key, max_entries=config.cache.max_entries) if config.cache.decision_memo else None
    authorizer = Authorizer(
        Policy.from_config(config.rules),
        IdentityResolver(sources, cache),
        cache,
        shadow=config.server.mode == "shadow",
        challenges=challenge_schemes(config.identity),
        memo=memo,
    )
    return Components(config, authorizer, cache, store, http, key, stats, tracing, idp_http)
