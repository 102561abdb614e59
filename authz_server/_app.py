"""Wiring: one function builds every component from a :class:`Config` (dependencies in, nothing global)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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
from ._opstats import RotationStats
from ._policy import Policy
from ._secrets import EnvSecret, Secret, SecretFile, read_secret_file
from ._store import Store, make_store
from .config import Config

__all__ = ["Components", "build_components", "credential_key", "service_secret"]


@dataclass
class Components:
    config: Config
    authorizer: Authorizer
    cache: CachedGerrit
    store: Store
    http: httpx.AsyncClient
    credential_key: bytes = b""
    stats: RotationStats = field(default_factory=RotationStats)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.store.close()


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
) -> Components:
    """Everything a decision needs. ``transport`` and ``store`` are seams for tests; ``http``, ``store`` (with
    its generations), ``key`` and ``stats`` are also how a reload keeps what it may keep."""
    stats = stats or RotationStats()
    secret = service_secret(config, stats)
    key = key or credential_key(config)
    http = http or make_http_client(
        max_connections=config.gerrit.max_connections, verify=config.gerrit.verify_tls, transport=transport
    )
    client = GerritClient(
        config.gerrit.url, config.gerrit.username, secret, http, timeout=config.gerrit.timeout, stats=stats
    )
    store = store or make_store(
        config.cache.backend,
        redis_url=config.cache.redis_url,
        namespace=config.cache.namespace,
        max_entries=config.cache.max_entries,
    )
    cache = CachedGerrit(
        client,
        store,
        config.cache.ttl,
        stale_if_error=config.cache.stale_if_error,
        secret=key,
    )
    sources: list[IdentitySource] = []
    for entry in config.identity:
        if entry.jwt is not None:
            sources.append(JwtSource(entry.jwt, JwtVerifier(entry.jwt, http)))
        elif entry.gerrit_http_credentials is not None:
            sources.append(BasicCredentialsSource(cache))
        elif entry.envoy_jwt_metadata is not None:
            sources.append(EnvoyJwtMetadataSource(entry.envoy_jwt_metadata))
        elif entry.mtls is not None:
            sources.append(MtlsSource(entry.mtls))
    authorizer = Authorizer(
        Policy.from_config(config.rules),
        IdentityResolver(sources, cache),
        cache,
        shadow=config.server.mode == "shadow",
    )
    return Components(config, authorizer, cache, store, http, key, stats)
