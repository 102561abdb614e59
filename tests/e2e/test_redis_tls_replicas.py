"""Two ``gerrit-authz serve`` processes sharing one real Redis over TLS (``rediss://`` with ``redis_ca_file``), as
an ACL user whose password comes from a file, in front of the real Gerrit."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from _support.authz import basic, example_config_data
from _support.redis import RedisServer
from _support.tls import TestCA
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.gerrit

ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
ACL_USER = ("gerrit-authz", "redis-acl-password")


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path, "redis CA")


@pytest.fixture
def redis(pki: TestCA) -> Iterator[RedisServer]:
    cert = pki.issue("redis", server=True)
    with RedisServer(tls=(cert.cert, cert.key, pki.cert), acl_user=ACL_USER) as server:
        yield server


@asynccontextmanager
async def replica(tmp_path: Path, name: str, gerrit: Any, redis: RedisServer, ca: Path) -> AsyncIterator[str]:
    """A `gerrit-authz serve` process; yields its admin address."""
    data = example_config_data()
    data["server"].update(listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    data["gerrit"].update(url=gerrit.server.url, username="authz-bot", password_env="REPLICA_GERRIT_PASSWORD")
    data["identity"] = [{"gerrit_http_credentials": {}}]
    key_file, password_file = tmp_path / "credential-key", tmp_path / "redis-password"
    key_file.write_text("replicas-share-this-key")
    password_file.write_text(ACL_USER[1])
    data["cache"].update(
        backend="redis",
        redis_url=redis.url,
        redis_ca_file=str(ca),
        redis_username=ACL_USER[0],
        redis_password_file=str(password_file),
        credential_key_file=str(key_file),
    )
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "REPLICA_GERRIT_PASSWORD": gerrit.org.bot.http_password}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz_server", "serve", "--config", str(config),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(2)]
        yield lines[1].rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def explain(admin: str, user: Any) -> admin_pb2.ExplainResponse:
    async with grpc.aio.insecure_channel(admin) as channel:
        request = admin_pb2.ExplainRequest(
            method="GET", path=ARTIFACT, headers={"authorization": basic(user.username, user.http_password)}
        )
        return await admin_pb2_grpc.AdminStub(channel).Explain(request, timeout=15)


def sources(decision: admin_pb2.ExplainResponse) -> list[str]:
    return [r.source for r in decision.requirements if r.kind == "permission"]


async def test_replicas_share_the_cache_over_tls(tmp_path: Path, gerrit: Any, redis: RedisServer, pki: TestCA) -> None:
    bob = gerrit.org.bob
    async with (
        replica(tmp_path, "a", gerrit, redis, pki.cert) as admin_a,
        replica(tmp_path, "b", gerrit, redis, pki.cert) as admin_b,
    ):
        first = await explain(admin_a, bob)
        assert first.allowed and sources(first) == ["gerrit"]
        second = await explain(admin_b, bob)  # B never asked Gerrit: A's answers came through Redis over TLS
        assert second.allowed and sources(second) == ["cache"]


async def test_a_replica_not_trusting_redis_certificate_asks_gerrit(
    tmp_path: Path, gerrit: Any, redis: RedisServer, pki: TestCA
) -> None:
    stranger = TestCA(tmp_path, "stranger CA")
    async with (
        replica(tmp_path, "a", gerrit, redis, pki.cert) as admin_a,
        replica(tmp_path, "c", gerrit, redis, stranger.cert) as admin_c,
    ):
        assert sources(await explain(admin_a, gerrit.org.bob)) == ["gerrit"]
        # C cannot reach Redis (the TLS handshake fails): a miss, answered by Gerrit; the same decision.
        decision = await explain(admin_c, gerrit.org.bob)
        assert decision.allowed and sources(decision) == ["gerrit"]
