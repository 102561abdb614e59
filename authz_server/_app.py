"""Wiring: one function builds every component from a :class:`Config` (dependencies in, nothing global)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
from ._policy import Policy
from ._store import Store, make_store
from .config import Config

__all__ = ["Components", "build_components"]


@dataclass
class Components:
    config: Config
    authorizer: Authorizer
    cache: CachedGerrit
    store: Store
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.store.close()


def build_components(
    config: Config, *, transport: httpx.AsyncBaseTransport | None = None, store: Store | None = None
) -> Components:
    """Everything a decision needs. ``transport`` and ``store`` are seams for tests."""
    password = config.gerrit.password()
    http = make_http_client(
        max_connections=config.gerrit.max_connections, verify=config.gerrit.verify_tls, transport=transport
    )
    client = GerritClient(config.gerrit.url, config.gerrit.username, password, http, timeout=config.gerrit.timeout)
    store = store or make_store(
        config.cache.backend,
        redis_url=config.cache.redis_url,
        namespace=config.cache.namespace,
        max_entries=config.cache.max_entries,
    )
    # Replicas sharing Redis must derive the same key for credential hashes; the service password is the
    # one secret they all share, and it never leaves the process.
    secret = hashlib.sha256(b"gerrit-authz credential cache v1\0" + password.encode()).digest()
    cache = CachedGerrit(
        client, store, config.cache.ttl, stale_if_error=config.cache.stale_if_error, secret=secret, tree=client
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
    authorizer = Authorizer(Policy.from_config(config.rules), IdentityResolver(sources, cache), cache)
    return Components(config, authorizer, cache, store, http)
