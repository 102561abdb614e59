"""Shadow mode through the real Envoy and the real Gerrit: a shadow rule lets a would-be deny reach the upstream with
``x-authz-shadow``, an enforced rule beside it still denies, and the audit lines and metrics carry the real decision.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support.authz import basic, make_config
from _support.envoy import EchoUpstream, EnvoyProcess, example_bootstrap, point_cluster

from authz_server._audit import AuditLog
from authz_server._server import AuthzServer, build_server

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

SHADOW_RULE = {"name": "trial-admin", "mode": "shadow", "match": {"path_prefix": "/trial/"}}
RULES = [
    {**SHADOW_RULE, "require": {"group": "Administrators"}},
    {"name": "admin-api", "match": {"path_prefix": "/admin/"}, "require": {"group": "Administrators"}},
]


async def send(envoy: EnvoyProcess, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.get(envoy.url() + path, headers=headers)


def as_user(user: Any) -> dict[str, str]:
    return {"authorization": basic(user.username, user.http_password)}


async def test_shadow_rule_lets_the_deny_through_and_the_enforced_rule_still_denies(
    gerrit: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "gerrit-password"
    secret.write_text(gerrit.org.bot.http_password)
    config = make_config(
        gerrit.server.url,
        secret,
        identity=[{"gerrit_http_credentials": {}}],
        rules=RULES,
        server={"metrics_listen": "127.0.0.1:0"},
    )
    lines: list[str] = []
    app: AuthzServer = build_server(config, audit=AuditLog(lines.append))
    await app.start()
    try:
        with EchoUpstream() as echo:
            bootstrap = example_bootstrap()
            point_cluster(bootstrap, "gerrit_authz", app.address)
            point_cluster(bootstrap, "upstream", echo.address)
            envoy = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path / "envoy").start)
            try:
                await _exercise(envoy, gerrit, app, lines)
            finally:
                await asyncio.to_thread(envoy.stop)
    finally:
        await app.stop(grace=1.0)


async def _exercise(envoy: EnvoyProcess, gerrit: Any, app: AuthzServer, lines: list[str]) -> None:
    carol, dave = gerrit.org.carol, gerrit.org.dave  # dave is in Administrators, carol is not

    # Shadow: carol would be refused (403), but reaches the upstream, which is told what enforcing would answer.
    shadowed = await send(envoy, "/trial/x", as_user(carol))
    assert shadowed.status_code == 200, shadowed.text
    seen = shadowed.json()["headers"]
    assert seen["x-authz-shadow"] == "requirement_failed"
    assert (seen["x-authz-rule"], seen["x-gerrit-username"]) == ("trial-admin", "carol")

    # Anonymous on the shadow rule: a would-be 401, let through with its code.
    anonymous = await send(envoy, "/trial/x")
    assert anonymous.status_code == 200 and anonymous.json()["headers"]["x-authz-shadow"] == "missing_credentials"

    # A shadow allow carries no shadow header; a client cannot forge one either.
    allowed = await send(envoy, "/trial/x", {**as_user(dave), "x-authz-shadow": "forged"})
    assert allowed.status_code == 200 and "x-authz-shadow" not in allowed.json()["headers"]

    # Enforced beside it: the same requirement denies carol for real.
    denied = await send(envoy, "/admin/x", as_user(carol))
    assert denied.status_code == 403 and denied.json()["error"] == "requirement_failed"

    audits = [json.loads(line) for line in lines]
    trial = [a for a in audits if a["rule"] == "trial-admin"]
    assert [(a["shadow"], a["allowed"], a["http_status"], a["code"]) for a in trial] == [
        (True, True, 403, "requirement_failed"),
        (True, True, 401, "missing_credentials"),
        (True, True, 200, ""),
    ]
    admin = [a for a in audits if a["rule"] == "admin-api"]
    assert [(a["shadow"], a["allowed"], a["http_status"]) for a in admin] == [(False, False, 403)]

    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://{app.metrics_address}/metrics")).text
    assert (
        'gerrit_authz_decisions_total{allowed="false",code="requirement_failed",http_status="403",'
        'mode="shadow",rule="trial-admin"} 1.0'
    ) in text
    assert (
        'gerrit_authz_decisions_total{allowed="false",code="requirement_failed",http_status="403",'
        'mode="enforce",rule="admin-api"} 1.0'
    ) in text
