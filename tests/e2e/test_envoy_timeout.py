"""A slow answer behind Envoy: Envoy's ext_authz timeout ends the wait, and nothing is allowed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from _support.authz import basic, make_config, running_server
from _support.envoy import (
    EchoUpstream,
    EnvoyProcess,
    example_bootstrap,
    hcm_of,
    http_filter,
    listener_named,
    point_cluster,
)

pytestmark = pytest.mark.envoy

ENVOY_TIMEOUT = 0.5


class _HangingGerrit(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(10)  # longer than any budget in this test

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hanging_gerrit() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangingGerrit)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_ext_authz_timeout_is_envoys_503_and_never_an_allow(hanging_gerrit: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("bot-password")
    config = make_config(hanging_gerrit, secret, identity=[{"gerrit_http_credentials": {}}])
    with EchoUpstream() as echo:
        async with running_server(config) as app:
            bootstrap = example_bootstrap()
            point_cluster(bootstrap, "gerrit_authz", app.address)
            point_cluster(bootstrap, "upstream", echo.address)
            ext_authz = http_filter(hcm_of(listener_named(bootstrap, "ingress")), "envoy.filters.http.ext_authz")
            ext_authz["typed_config"]["grpc_service"]["timeout"] = f"{ENVOY_TIMEOUT}s"
            envoy = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path / "envoy").start)
            try:
                started = time.monotonic()
                async with httpx.AsyncClient(timeout=15) as client:
                    resp = await client.get(
                        envoy.url() + "/dashboard", headers={"authorization": basic("bob", "his-password")}
                    )
                elapsed = time.monotonic() - started
            finally:
                await asyncio.to_thread(envoy.stop)
    assert resp.status_code == 503  # status_on_error: the Check did not come back in time
    assert echo.requests == 0  # failure_mode_allow: false: nothing reached the upstream
    # Envoy's timeout (sent to us as the gRPC deadline) bounded the wait, not the hanging Gerrit's 10 s.
    assert elapsed < ENVOY_TIMEOUT + 1.5
