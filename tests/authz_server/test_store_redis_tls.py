"""The Redis store over TLS with a real ``redis-server --tls-port``: an ACL user or ``requirepass``, the password
from a file (re-read for new connections), the server's certificate checked against ``redis_ca_file``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _support.redis import RedisServer
from _support.tls import TestCA

from authz_server._generations import bucket
from authz_server._redis_conn import RedisConnection
from authz_server._secrets import SecretFile
from authz_server._store import Entry, RedisStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture(scope="module")
def redis_tls(pki: TestCA) -> Iterator[RedisServer]:
    cert = pki.issue("redis", server=True)
    with RedisServer(tls=(cert.cert, cert.key, pki.cert), acl_user=("gerrit-authz", "acl-pw-1")) as server:
        yield server


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "redis-password"
    path.write_text("acl-pw-1\n")
    return path


@pytest.fixture
async def make_store() -> AsyncIterator[object]:
    stores: list[RedisStore] = []

    def factory(url: str, conn: RedisConnection) -> RedisStore:
        store = RedisStore(url, "tls-test:", op_timeout=2.0, connection=conn)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


async def _put(store: RedisStore, key: str, payload: object) -> None:
    """Write ``payload`` under ``key`` as a lookup starting now would (its snapshot read first)."""
    snapshot = await store.snapshot()
    await store.write(key, Entry(payload, time.time() + 30, time.time() + 60, snapshot, (bucket("a:1"),)), ttl=30)


async def _get(store: RedisStore, key: str) -> object:
    """The payload of a current entry under ``key``, else None (a miss, also when Redis cannot be reached)."""
    entry, current, _ = await store.read(key)
    return entry.payload if entry is not None and current else None


async def test_acl_user_over_tls_round_trips(
    redis_tls: RedisServer, pki: TestCA, password_file: Path, make_store: object
) -> None:
    assert redis_tls.url.startswith("rediss://")
    conn = RedisConnection(pki.cert, "gerrit-authz", SecretFile(password_file, "cache.redis_password_file"))
    store = make_store(redis_tls.url, conn)  # type: ignore[operator]
    await _put(store, "groups|a=1|", {"g": [1, 2]})
    assert await _get(store, "groups|a=1|") == {"g": [1, 2]}
    await store.bump([bucket("a:1")])  # generations live in the same TLS Redis
    assert await _get(store, "groups|a=1|") is None


async def test_untrusted_certificate_or_wrong_password_is_a_miss_never_a_crash(
    redis_tls: RedisServer, tmp_path: Path, password_file: Path, make_store: object
) -> None:
    stranger = TestCA(tmp_path, "stranger CA")
    conn = RedisConnection(stranger.cert, "gerrit-authz", SecretFile(password_file, "cache.redis_password_file"))
    store = make_store(redis_tls.url, conn)  # type: ignore[operator]
    await _put(store, "k|", 1)
    assert await _get(store, "k|") is None
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    store = make_store(redis_tls.url, RedisConnection(None, "gerrit-authz", SecretFile(wrong, "x")))  # type: ignore[operator]
    assert await _get(store, "k|") is None


async def test_password_file_is_reread_for_new_connections(pki: TestCA, tmp_path: Path, make_store: object) -> None:
    cert = pki.issue("redis-rp", server=True)
    with RedisServer(tls=(cert.cert, cert.key, pki.cert), requirepass="first-pw") as server:
        password = tmp_path / "pw"
        password.write_text("first-pw")
        conn = RedisConnection(pki.cert, None, SecretFile(password, "cache.redis_password_file"))
        store = make_store(server.url, conn)  # type: ignore[operator]
        await _put(store, "k|", 1)
        assert await _get(store, "k|") == 1
        # The same connection settings, new connections: the changed file is read (a wrong password: a miss).
        password.write_text("rotated-but-wrong")
        assert await _get(make_store(server.url, conn), "k|") is None  # type: ignore[operator]
        password.write_text("first-pw")
        assert await _get(make_store(server.url, conn), "k|") == 1  # type: ignore[operator]
