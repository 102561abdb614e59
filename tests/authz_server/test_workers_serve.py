"""``server.workers: 2`` as a user runs it: ``gerrit-authz serve`` starts two worker processes that share the
ext_authz port; both answer Checks, an Admin Invalidate answered by one reaches the other within a second (the
generation table they share), the supervisor serves both workers' metrics, and SIGTERM stops everything with 0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from _support.authz import check_request
from _support.http_double import serve_handler
from _support.tls import TestCA
from envoy.service.auth.v3 import external_auth_pb2_grpc
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

ALICE = {"_account_id": 1000002, "username": "alice", "email": "alice@example.com"}
DEVS = {"id": "d" * 40, "name": "devs"}


class _Gerrit(BaseHTTPRequestHandler):
    """A loopback Gerrit: alice's password is ``pw``; her groups are whatever the test says now."""

    groups: ClassVar[list[dict[str, str]]] = [DEVS]

    def do_GET(self) -> None:
        if self.path.startswith("/a/accounts/self"):
            ok = self.headers.get("authorization") == "Basic " + base64.b64encode(b"alice:pw").decode()
            self._answer(200 if ok else 401, ALICE if ok else None)
        elif self.path.startswith("/a/accounts/1000002/groups"):
            self._answer(200, type(self).groups)
        else:
            self._answer(404, None)

    def _answer(self, status: int, data: object) -> None:
        body = b")]}'\n" + json.dumps(data).encode() if data is not None else b"Not found"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gerrit() -> Iterator[str]:
    _Gerrit.groups = [DEVS]
    with serve_handler(_Gerrit) as url:
        yield url


def _connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to ``port`` each process holds (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(p) for p in fds.iterdir() if p.is_symlink()]
        counts[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return counts


async def _reap(proc: asyncio.subprocess.Process, pids: list[int]) -> None:
    """Kill the supervisor and any worker still alive, so a failed test leaves no process behind."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_two_workers_share_the_port_and_an_invalidation(tmp_path: Path, gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0", metrics_listen: "127.0.0.1:0", workers: 2,
          worker_port_base: 0, config_watch_interval: 0s}}
gerrit: {{url: "{gerrit}", username: authz-bot, password_env: TEST_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
rules:
  - {{name: devs, match: {{path_prefix: /}}, require: {{group: devs}}}}
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authz_server",
        "serve",
        "--config",
        str(config),
        env={**os.environ, "TEST_GERRIT_PASSWORD": "bot-password"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    pids: list[int] = []
    try:
        lines = []
        while not lines or "workers (" not in lines[-1]:
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
            assert lines[-1], lines
        text = "".join(lines)
        address = re.search(r"ext_authz gRPC listening on (\S+)", text)
        admin = re.search(r"admin gRPC listening on (\S+)", text)
        metrics = re.search(r"metrics on (\S+)", text)
        assert address and admin and metrics, text
        pids = [int(p) for p in re.search(r"workers \(([\d, ]+)\)", text).group(1).split(", ")]  # type: ignore[union-attr]
        assert len(pids) == 2 and proc.pid not in pids
        port = int(address.group(1).rsplit(":", 1)[1])
        # Each worker's own address too (server.worker_port_base), for a balancer that spreads every Check.
        own = dict(re.findall(r"worker (\d) ext_authz gRPC listening on (\S+)", text))
        assert sorted(own) == ["0", "1"] and len(set(own.values())) == 2, text

        auth = {"authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
        request = check_request("GET", "/x", auth)
        # Separate connections (a channel each, no shared subchannel): the kernel spreads them over the workers.
        channels = [
            grpc.aio.insecure_channel(address.group(1), options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        channels += [grpc.aio.insecure_channel(own[i]) for i in ("0", "1")]
        try:
            stubs = [external_auth_pb2_grpc.AuthorizationStub(c) for c in channels]
            for stub in stubs:
                assert (await stub.Check(request, timeout=10)).status.code == 0
            by_pid = _connections_by_pid(port, pids)
            assert all(n > 0 for n in by_pid.values()), f"one worker got no connection: {by_pid}"
            assert sum(by_pid.values()) == 16
            for i, pid in enumerate(pids):  # worker i's own port is held by worker i
                assert _connections_by_pid(int(own[str(i)].rsplit(":", 1)[1]), [pid]) == {pid: 1}

            # Alice leaves devs in Gerrit: until told, every worker answers from what it remembers.
            _Gerrit.groups = []
            for stub in stubs:
                assert (await stub.Check(request, timeout=10)).status.code == 0
            async with grpc.aio.insecure_channel(admin.group(1)) as admin_channel:
                await admin_pb2_grpc.AdminStub(admin_channel).Invalidate(
                    admin_pb2.InvalidateRequest(group="devs"), timeout=10
                )
            told = time.monotonic()
            answers = [await stub.Check(request, timeout=10) for stub in stubs]
            elapsed = time.monotonic() - told
            assert [a.status.code for a in answers] == [7] * len(stubs)  # PERMISSION_DENIED on both workers
            assert elapsed < 1.0, elapsed

            # The supervisor's /metrics sums both workers' decisions (18 + 18 allowed, 18 denied).
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics.group(1), timeout=5).read())
            allowed = sum(
                float(m.group(1))
                for m in re.finditer(rb'gerrit_authz_decisions_total\{allowed="true"[^}]*\} (\S+)', body)
            )
            assert allowed == 36, body.decode()[:2000]

            # A reload (SIGHUP to the supervisor, forwarded): every worker switches to the new policy, and the
            # memo of the old one is gone with it.
            config.write_text(config.read_text().replace("require: {group: devs}", "require: authenticated"))
            proc.send_signal(signal.SIGHUP)
            reloaded = time.monotonic()
            while time.monotonic() - reloaded < 10:
                answers = [await stub.Check(request, timeout=10) for stub in stubs]
                if all(a.status.code == 0 for a in answers):
                    break
                await asyncio.sleep(0.05)
            assert [a.status.code for a in answers] == [0] * len(stubs), "a worker kept the old policy"
        finally:
            for channel in channels:
                await channel.close()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert "stopped" in (await proc.stdout.read()).decode()
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the supervisor"  # noqa: ASYNC240
    finally:
        await _reap(proc, pids)


async def test_a_worker_that_dies_stops_the_service_with_a_failure(tmp_path: Path, gerrit: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:0", admin_listen: null, workers: 2, shutdown_grace: 1s}}
gerrit: {{url: "{gerrit}", username: authz-bot, password_env: TEST_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
rules: [{{name: devs, match: {{path_prefix: /}}, require: {{group: devs}}}}]
""")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "authz_server", "serve", "--config", str(config)),
        env={**os.environ, "TEST_GERRIT_PASSWORD": "bot-password"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pids: list[int] = []
    try:
        while not pids:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line
            if found := re.search(r"workers \(([\d, ]+)\)", line):
                pids = [int(p) for p in found.group(1).split(", ")]
        os.kill(pids[1], signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 30) == 1
        stderr = (await proc.stderr.read()).decode()
        assert f"worker 1 (pid {pids[1]}) exited with status -9; stopping every worker" in stderr
        assert not os.path.exists(f"/proc/{pids[0]}")  # noqa: ASYNC240 - the survivor was stopped too
    finally:
        await _reap(proc, pids)


async def test_a_certificate_only_workers_can_load_is_a_configuration_error(tmp_path: Path, gerrit: str) -> None:
    """The pair is loaded where it is served, in the workers: a key that does not match is still exit 2."""
    ca = TestCA(tmp_path, "corp CA")
    cert, other = ca.issue("authz", server=True), ca.issue("someone-else", server=True)
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:0", workers: 2, tls: {{cert_file: "{cert.cert}", key_file: "{other.key}"}}}}
gerrit: {{url: "{gerrit}", username: authz-bot, password_env: TEST_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
rules: [{{name: devs, match: {{path_prefix: /}}, require: {{group: devs}}}}]
""")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "authz_server", "serve", "--config", str(config)),
        env={**os.environ, "TEST_GERRIT_PASSWORD": "bot-password"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert await asyncio.wait_for(proc.wait(), 60) == 2
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
