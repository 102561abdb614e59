"""Two gerrit-authz processes sharing one real Redis, in front of the real Gerrit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from _support.authz import basic, example_config_data
from _support.gerrit_provision import Rest
from _support.redis import RedisServer
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.gerrit

ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@asynccontextmanager
async def replica(
    tmp_path: Path, name: str, gerrit: Any, redis_url: str, *, gerrit_url: str | None = None, budget: str = ""
) -> AsyncIterator[tuple[str, str]]:
    """A `gerrit-authz serve` process; yields its (ext_authz, admin) addresses."""
    data = example_config_data()
    data["server"].update(listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    data["gerrit"].update(
        url=gerrit_url or gerrit.server.url, username="authz-bot", password_env="REPLICA_GERRIT_PASSWORD"
    )
    if budget:
        data["server"]["check_timeout"] = budget
        data["gerrit"]["timeout"] = budget
    data["identity"] = [{"gerrit_http_credentials": {}}]
    # One credential key file for all replicas, so B finds A's cached credential checks (README: without it
    # each replica hashes credentials under its own random key).
    key_file = tmp_path / "credential-key"
    if not key_file.exists():
        key_file.write_text("replicas-share-this-key")
    data["cache"].update(backend="redis", redis_url=redis_url, credential_key_file=str(key_file))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "REPLICA_GERRIT_PASSWORD": gerrit.org.bot.http_password}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authz_server",
        "serve",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(2)]
        yield lines[0].rsplit(" ", 1)[1].strip(), lines[1].rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0  # a Redis outage never crashed it


async def explain(admin: str, user: Any, path: str = ARTIFACT) -> admin_pb2.ExplainResponse:
    async with grpc.aio.insecure_channel(admin) as channel:
        request = admin_pb2.ExplainRequest(
            method="GET", path=path, headers={"authorization": basic(user.username, user.http_password)}
        )
        return await admin_pb2_grpc.AdminStub(channel).Explain(request, timeout=15)


async def invalidate(admin: str, **target: Any) -> int:
    async with grpc.aio.insecure_channel(admin) as channel:
        reply = await admin_pb2_grpc.AdminStub(channel).Invalidate(admin_pb2.InvalidateRequest(**target), timeout=15)
        return int(reply.removed)


def sources(decision: admin_pb2.ExplainResponse) -> list[str]:
    return [r.source for r in decision.requirements if r.kind == "permission"]


async def test_replicas_share_answers_and_invalidation_through_redis(
    tmp_path: Path, gerrit: Any, redis: RedisServer
) -> None:
    bob = gerrit.org.bob
    async with (
        replica(tmp_path, "a", gerrit, redis.url) as (_, admin_a),
        replica(tmp_path, "b", gerrit, redis.url) as (_, admin_b),
    ):
        first = await explain(admin_a, bob)
        assert first.allowed and sources(first) == ["gerrit"]

        # B never asked Gerrit: the credential check and the check.access answer come from A's lookups in Redis.
        second = await explain(admin_b, bob)
        assert second.allowed and sources(second) == ["cache"]
        assert second.identity.username == "bob"

        # Invalidate on B is seen by A: A asks Gerrit again.
        assert await invalidate(admin_b, account="bob") >= 2
        third = await explain(admin_a, bob)
        assert third.allowed and sources(third) == ["gerrit"]

        # Redis goes away: lookups fall back to Gerrit; a deny stays a deny, nothing crashes.
        redis.kill()
        after = await explain(admin_b, bob)
        assert after.allowed and sources(after) == ["gerrit"]
        secret = await explain(admin_a, gerrit.org.carol, "/artifacts/platform%2Fsecret/-/main/out/app.tar")
        assert (secret.allowed, secret.http_status, secret.code) == (False, 403, "requirement_failed")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await invalidate(admin_a, account="bob")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # said plainly, not a silent "removed 0"


class HoldingProxy:
    """A TCP proxy to Gerrit that holds Gerrit's replies while ``open`` is clear (an answer arriving late)."""

    def __init__(self, upstream: str) -> None:
        host_port = upstream.split("://", 1)[1].rstrip("/")
        self._host, port = host_port.rsplit(":", 1)
        self._port = int(port)
        self.open = asyncio.Event()
        self.open.set()
        self.held = asyncio.Event()  # set once a reply is being held
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if hold and not self.open.is_set():
                    self.held.set()
                    await self.open.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self._host, self._port)
        await asyncio.gather(self._pipe(client_r, up_w, False), self._pipe(up_r, client_w, True))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_invalidate_on_one_replica_while_the_others_lookup_is_in_flight(
    tmp_path: Path, gerrit: Any, rest: Rest, redis: RedisServer
) -> None:
    project = f"replicas/{uuid.uuid4().hex[:8]}"
    rest.put(f"projects/{project.replace('/', '%2F')}", {"branches": ["main"], "create_empty_commit": True})
    path = f"/artifacts/{project.replace('/', '%2F')}/-/main/out/app.tar"
    bob = gerrit.org.bob
    proxy = HoldingProxy(gerrit.server.url)
    slow_url = await proxy.start()
    try:
        async with (
            replica(tmp_path, "a", gerrit, redis.url, gerrit_url=slow_url, budget="20s") as (_, admin_a),
            replica(tmp_path, "b", gerrit, redis.url, budget="20s") as (_, admin_b),
        ):
            assert (await explain(admin_b, bob)).allowed  # warms bob's credential check for both, not this project
            proxy.open.clear()
            # A asks Gerrit for check.access; Gerrit answers "allowed" at once, and the answer is held on its way.
            in_flight = asyncio.create_task(explain(admin_a, bob, path))
            await asyncio.wait_for(proxy.held.wait(), 15)
            block = {"read": {"rules": {"global:Registered-Users": {"action": "BLOCK"}}}}
            rest.post(
                f"projects/{project.replace('/', '%2F')}/access", {"add": {"refs/heads/*": {"permissions": block}}}
            )
            await invalidate(admin_b, project=project)  # returned: from now on nobody uses the held answer
            proxy.open.set()
            first = await in_flight
            # Not even the Check that asked uses the held answer: A asked Gerrit again under the new generations.
            assert (first.allowed, first.http_status, sources(first)) == (False, 403, ["gerrit"])
            # And neither replica serves the held answer later.
            for admin in (admin_b, admin_a):
                after = await explain(admin, bob, path)
                assert (after.allowed, after.http_status) == (False, 403), sources(after)
    finally:
        await proxy.close()
