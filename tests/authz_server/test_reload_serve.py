"""Reload without restart, proven on ``gerrit-authz serve`` as a process: SIGHUP, atomic file replace, a refused
file, and a Check in flight across a reload."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from _support.authz import basic, check_request
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

ENV = {**os.environ, "RELOAD_GERRIT_PASSWORD": "bot-password"}


def config_text(gerrit_url: str, rules: str, *, watch: str = "0s") -> str:
    return f"""
server: {{listen: "127.0.0.1:0", admin_listen: null, metrics_listen: "127.0.0.1:0", check_timeout: 5s,
          config_watch_interval: {watch}}}
gerrit: {{url: "{gerrit_url}", username: authz-bot, password_env: RELOAD_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
rules:
{rules}
"""


OPEN = "  - {name: open, match: {path_prefix: /x}, require: anyone}\n"
SIGNED_IN = "  - {name: signed-in, match: {path_prefix: /x}, require: authenticated}\n"
HEALTH_ONLY = "  - {name: health, match: {path: /healthz}, require: anyone}\n"


def replace_atomically(path: Path, text: str) -> None:
    """What editors, ConfigMap updates and Vault agents do: write aside, then rename over the file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    address: str
    metrics_url: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def metric(self, name: str) -> float:
        for line in httpx.get(self.metrics_url, timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")


@asynccontextmanager
async def serving(tmp_path: Path, config: Path) -> AsyncIterator[Served]:
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "authz_server", "serve", "--config", str(config), env=ENV,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(2)]
        address = lines[0].rsplit(" ", 1)[1].strip()
        metrics_url = lines[1].rsplit(" ", 1)[1].strip()
        yield Served(proc, address, metrics_url, stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def check(stub: external_auth_pb2_grpc.AuthorizationStub, **headers: str) -> CheckResponse:
    response: CheckResponse = await stub.Check(check_request("GET", "/x", headers), timeout=10)
    return response


async def until_code(stub: external_auth_pb2_grpc.AuthorizationStub, code: int, seconds: float = 10.0) -> int:
    """Polls (bounded in count and time) until a Check answers ``code``; returns how many Checks it took."""
    for attempt in range(1, 200):
        if (await check(stub)).status.code == code:
            return attempt
        if attempt * 0.05 > seconds:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"decision never became {code}")


async def test_sighup_reload_flips_decisions_on_the_same_connection(tmp_path: Path, lazy_gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, OPEN))
    async with serving(tmp_path, config) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert (await check(stub)).status.code == 0
            config.write_text(config_text(lazy_gerrit, SIGNED_IN))
            await asyncio.sleep(0.5)
            assert (await check(stub)).status.code == 0, "no polling configured: nothing changes without SIGHUP"
            served.proc.send_signal(signal.SIGHUP)
            await until_code(stub, 16)  # anonymous is now 401
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            assert served.metric('gerrit_authz_config_reloads_total{result="success"}') == 1
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0
    assert "reload (SIGHUP): applied" in served.log()


async def test_atomic_replace_is_picked_up_by_polling(tmp_path: Path, lazy_gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, OPEN, watch="200ms"))
    async with serving(tmp_path, config) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert (await check(stub)).status.code == 0
            replace_atomically(config, config_text(lazy_gerrit, HEALTH_ONLY, watch="200ms"))
            await until_code(stub, 7)  # no rule matches /x any more: 403
            response = await check(stub)
            assert response.denied_response.body.startswith('{"error":"no_matching_rule"')
            replace_atomically(config, config_text(lazy_gerrit, OPEN, watch="200ms"))
            await until_code(stub, 0)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0
    assert served.log().count("applied") == 2


async def test_invalid_file_keeps_the_running_policy_logs_the_key_and_exits_0(tmp_path: Path, lazy_gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, OPEN, watch="200ms"))
    bad = config_text(lazy_gerrit, "  - {name: open, match: {path_prefix: /x}, requir: anyone}\n", watch="200ms")
    async with serving(tmp_path, config) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            replace_atomically(config, bad)
            for _ in range(100):  # bounded: 100 x 50 ms
                if "refused" in served.log():
                    break
                await asyncio.sleep(0.05)
            log = served.log()
            assert "rules[0].requir: unknown key" in log and "rules[0].require: Field required" in log
            assert (await check(stub)).status.code == 0  # the old policy still decides
            served.proc.send_signal(signal.SIGHUP)  # asked again: refused again, still running
            for _ in range(100):
                if served.metric('gerrit_authz_config_reloads_total{result="failure"}') == 2:
                    break
                await asyncio.sleep(0.05)
            assert served.metric('gerrit_authz_config_reloads_total{result="failure"}') == 2
            assert served.metric('gerrit_authz_config_reloads_total{result="success"}') == 0
            assert (await check(stub)).status.code == 0
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0
    # check-config judges the same file the same way (one validation for both).
    checker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz_server", "check-config", str(config), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(checker.communicate(), 30)
    assert checker.returncode == 2 and "rules[0].requir: unknown key" in err.decode()


async def test_a_check_in_flight_during_a_reload_completes_with_its_old_policy(
    tmp_path: Path, lazy_gerrit: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, SIGNED_IN))
    async with serving(tmp_path, config) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            in_flight = asyncio.ensure_future(check(stub, authorization=basic("alice", "pw")))
            await asyncio.sleep(0.3)  # now waiting for the slow Gerrit's credential check
            config.write_text(config_text(lazy_gerrit, HEALTH_ONLY))
            served.proc.send_signal(signal.SIGHUP)
            await until_code(stub, 7)  # new Checks already see the new policy (no rule for /x)
            assert not in_flight.done()
            response = await in_flight
            assert response.status.code == 0
            headers = {h.header.key: h.header.value for h in response.ok_response.headers}
            assert (headers["x-authz-rule"], headers["x-gerrit-username"]) == ("signed-in", "alice")
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0


async def test_changed_listen_address_is_logged_as_needing_a_restart(tmp_path: Path, lazy_gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, OPEN))
    async with serving(tmp_path, config) as served:
        config.write_text(config_text(lazy_gerrit, OPEN).replace('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:1"'))
        served.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "needs a restart" in served.log():
                break
            await asyncio.sleep(0.05)
        assert "server.listen changed; it needs a restart" in served.log()
        async with grpc.aio.insecure_channel(served.address) as channel:  # still where it was
            assert (await check(external_auth_pb2_grpc.AuthorizationStub(channel))).status.code == 0
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0


async def test_reloading_server_mode_shadow_lets_would_be_denies_through(tmp_path: Path, lazy_gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(lazy_gerrit, HEALTH_ONLY))
    async with serving(tmp_path, config) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert (await check(stub)).status.code == 7
            config.write_text(
                config_text(lazy_gerrit, HEALTH_ONLY).replace(
                    "config_watch_interval", "mode: shadow, config_watch_interval"
                )
            )
            served.proc.send_signal(signal.SIGHUP)
            await until_code(stub, 0)
            headers = {h.header.key: h.header.value for h in (await check(stub)).ok_response.headers}
            assert headers["x-authz-shadow"] == "no_matching_rule"
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0
    assert '"shadow":true' in served.log() and '"code":"no_matching_rule"' in served.log()
