"""Outages are errors, not denials: real Envoy 1.40 in front of gerrit-authz whose Gerrit is unreachable.

Measured with Envoy 1.40 (and, by hand, 1.36.4; see README "Outages"):
- ``error_response`` with status UNAVAILABLE: counted in ``ext_authz.error`` (not ``denied``). With
  ``failure_mode_allow: false`` Envoy answers *our* status, ``retry-after`` and JSON body, not its
  ``status_on_error`` (that one is only for Envoy's own failures: gerrit-authz unreachable or too slow). With
  ``failure_mode_allow: true`` the request goes upstream and ``ext_authz.failure_mode_allowed`` counts it.
- A definite deny (401 here) stays a deny either way.
- ``server.outages: deny`` sends the 503 as ``denied_response``: counted in ``denied``, never let through.
"""

from __future__ import annotations

import asyncio
import socket
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


def closed_loopback_url() -> str:
    """A loopback port nobody listens on: Gerrit is down, connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("outages", "failure_mode_allow"), [("error", False), ("error", True), ("deny", True)], ids=str
)
async def test_gerrit_outage_reaches_envoy_as_an_error(outages: str, failure_mode_allow: bool, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("bot-password")
    config = make_config(
        closed_loopback_url(),
        secret,
        identity=[{"gerrit_http_credentials": {}}],
        server={"outages": outages, "retry_after": "7s"},
    )
    with EchoUpstream() as echo:
        async with running_server(config) as app:
            bootstrap = example_bootstrap()
            point_cluster(bootstrap, "gerrit_authz", app.address)
            point_cluster(bootstrap, "upstream", echo.address)
            ext_authz = http_filter(hcm_of(listener_named(bootstrap, "ingress")), "envoy.filters.http.ext_authz")
            ext_authz["typed_config"]["failure_mode_allow"] = failure_mode_allow
            # Not the example's 503: shows which status the client gets, Envoy's or ours.
            ext_authz["typed_config"]["status_on_error"] = {"code": "InternalServerError"}
            envoy = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path / "envoy").start)
            try:
                async with httpx.AsyncClient(timeout=15) as client:
                    outage = await client.get(
                        envoy.url() + "/dashboard", headers={"authorization": basic("bob", "his-password")}
                    )
                    stats_after_outage = envoy.stats("http.ingress.ext_authz.")
                    anonymous = await client.get(envoy.url() + "/dashboard")
                    stats = envoy.stats("http.ingress.ext_authz.")
            finally:
                await asyncio.to_thread(envoy.stop)

    def stat(name: str, source: dict[str, int] = stats) -> int:
        return source.get(f"http.ingress.ext_authz.{name}", 0)

    # A definite deny stays a deny, whatever failure_mode_allow says.
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "missing_credentials"
    assert stat("denied") - stat("denied", stats_after_outage) == 1
    if outages == "error":
        assert (stat("error", stats_after_outage), stat("denied", stats_after_outage)) == (1, 0)
    else:
        assert (stat("error", stats_after_outage), stat("denied", stats_after_outage)) == (0, 1)
    if outages == "error" and failure_mode_allow:
        assert outage.status_code == 200  # the operator's choice: Envoy lets it through
        assert stat("failure_mode_allowed") == 1
        assert echo.requests == 1
        return
    # Fail closed: our 503, retry-after and JSON body (Envoy's status_on_error 500 is not used).
    assert outage.status_code == 503, (outage.status_code, outage.text)
    assert outage.headers["retry-after"] == "7"
    assert outage.headers["content-type"] == "application/json"
    body = outage.json()
    assert body["error"] == "gerrit_unavailable" and body["rule"] == "dashboard"
    assert "his-password" not in outage.text
    assert stat("failure_mode_allowed") == 0
    assert echo.requests == 0
