"""How the Redis client connects: address from ``redis_url``, TLS for ``rediss://`` (``redis_ca_file``), and the
credentials from ``redis_username`` and ``redis_password_file``/``redis_password_env`` (never from the URL).

The password is handed to redis-py as a credential provider, asked on every new connection, so a rotated password
file is used by the next connection without a restart.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._secrets import EnvSecret, Secret, SecretFile

__all__ = ["RedisConnection", "check_redis_url", "redis_cache_options"]


def check_redis_url(url: str, *, ca_file: bool = False) -> None:
    """Raise ``ValueError`` for a URL that is not ``redis[s]://HOST[:PORT][/DB]`` or that carries a secret."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("redis_url must start with redis:// or rediss://")
    if parts.password is not None:
        # Not echoed: the value is a credential.
        raise ValueError("redis_url must not hold a password: use redis_password_file or redis_password_env")
    if parts.username:
        raise ValueError("redis_url must not hold a user name: use redis_username")
    if parts.query or parts.fragment:
        raise ValueError("redis_url takes no query or fragment")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError("redis_url's path must be a database number")
    try:
        port = parts.port  # raises for a bad port
    except ValueError:
        port = 0
    if port == 0:  # 0 too: redis_cache_options would read it as "no port" and connect to 6379
        raise ValueError("redis_url: port must be a number from 1 to 65535")
    if ca_file and parts.scheme != "rediss":
        raise ValueError("redis_ca_file is for TLS: use a rediss:// redis_url")


@dataclass(frozen=True)
class RedisConnection:
    """Everything but the address: TLS trust and credentials (the password as a live :class:`Secret`)."""

    ca_file: Path | None = None
    username: str | None = None
    password: Secret | None = None

    @classmethod
    def from_config(cls, cache: Any) -> RedisConnection:
        """From a :class:`~authz_server.config.CacheConfig` (reads the password now, so a missing one fails early)."""
        password: Secret | None = None
        if cache.redis_password_file is not None:
            password = SecretFile(cache.redis_password_file, "cache.redis_password_file")
        elif cache.redis_password_env is not None:
            password = EnvSecret(cache.redis_password_env, "cache.redis_password_env")
        return cls(cache.redis_ca_file, cache.redis_username, password)


class _Credentials:
    """redis-py's credential-provider interface (``get_credentials[_async]``, asked for every new connection),
    duck-typed so that this module needs no ``redis`` import (the memory backend works without the extra)."""

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self._conn.password.get() if self._conn.password is not None else ""
        return (self._conn.username, password) if self._conn.username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def redis_cache_options(url: str, conn: RedisConnection | None = None) -> dict[str, Any]:
    """Keyword arguments for aiocache's ``RedisCache``: address, database, TLS and credentials."""
    check_redis_url(url)
    conn = conn or RedisConnection()
    parts = urlsplit(url)
    tls = parts.scheme == "rediss"
    pool: dict[str, Any] = {}
    if tls:
        # Hostname checked against the certificate, trust from redis_ca_file or else the system's store.
        pool.update(ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_check_hostname=True)
        if conn.ca_file is not None:
            pool["ssl_ca_certs"] = str(conn.ca_file)
    if conn.username is not None or conn.password is not None:
        pool["credential_provider"] = _Credentials(conn)
    return {
        "endpoint": unquote(parts.hostname or "127.0.0.1"),
        "port": parts.port or 6379,
        "db": int(parts.path.lstrip("/") or 0),
        "ssl": tls,
        "connection_pool_kwargs": pool,
    }
