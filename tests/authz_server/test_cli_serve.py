"""The ``gerrit-authz`` command as a user runs it: serve (with SIGTERM draining), explain."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from _support.authz import check_request
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def write_config(tmp_path: Path, gerrit_url: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0", shutdown_grace: 5s, check_timeout: 5s}}
gerrit: {{url: "{gerrit_url}", username: authz-bot, password_env: TEST_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
rules:
  - {{name: health, match: {{path: /healthz}}, require: anyone}}
  - {{name: signed-in, match: {{path_prefix: /}}, require: authenticated}}
""")
    return config


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "authz_server", *args]


ENV = {**os.environ, "TEST_GERRIT_PASSWORD": "bot-password"}


async def test_sigterm_goes_not_serving_drains_in_flight_checks_and_exits_0(tmp_path: Path, lazy_gerrit: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cli("serve", "--config", str(write_config(tmp_path, lazy_gerrit))),
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "ext_authz gRPC listening on 127.0.0.1:" in line
        address = line.rsplit(" ", 1)[1].strip()
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            auth = "Basic " + base64.b64encode(b"alice:pw").decode()
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            in_flight = asyncio.ensure_future(
                stub.Check(check_request("GET", "/x", {"authorization": auth}), timeout=10)
            )
            await asyncio.sleep(0.3)  # the Check is now waiting for the slow Gerrit
            proc.send_signal(signal.SIGTERM)

            assert (await asyncio.wait_for(watch.read(), 5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            response = await in_flight  # drained, not cut off
            assert response.status.code == 0
            assert {h.header.key: h.header.value for h in response.ok_response.headers}["x-gerrit-username"] == "alice"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        rest = (await proc.stdout.read()).decode()
        assert "stopped" in rest
        assert proc.stderr is not None
        logged = (await proc.stderr.read()).decode()
        assert '"decision_id"' in logged  # the audit line is there, without the credential
        assert "YWxpY2U6cHc=" not in logged and "alice:pw" not in logged
        # No noise at start-up: asyncssh's import used to print seven DSA deprecation warnings.
        assert "DeprecationWarning" not in logged, logged
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_explain_exit_codes_and_trace(tmp_path: Path, lazy_gerrit: str) -> None:
    config = str(write_config(tmp_path, lazy_gerrit))
    allowed = subprocess.run(
        cli("explain", "--config", config, "--path", "/healthz"), env=ENV, capture_output=True, text=True, timeout=30
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["rule"] == "health"
    assert "DeprecationWarning" not in allowed.stderr, allowed.stderr

    denied = subprocess.run(
        cli("explain", "--config", config, "--method", "POST", "--path", "/x"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode == 1
    trace = json.loads(denied.stdout)
    assert (trace["http_status"], trace["code"]) == (401, "missing_credentials")
    assert trace["requirements"][0]["kind"] == "authenticated"

    signed_in = subprocess.run(
        cli("explain", "--config", config, "--path", "/x", "--header", "authorization: Basic YWxpY2U6cHc="),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert signed_in.returncode == 0, signed_in.stdout
    assert json.loads(signed_in.stdout)["identity"]["username"] == "alice"


def test_serve_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gerrit: {url: 'http://x', username: u, password_env: P, tiemout: 2s}\nrules: []\n")
    result = subprocess.run(cli("serve", "--config", str(bad)), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "gerrit.tiemout: unknown key" in result.stderr
    assert "rules" in result.stderr
