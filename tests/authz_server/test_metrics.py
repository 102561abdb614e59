"""Prometheus metrics on server.metrics_listen, scraped over real HTTP from a running server."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from _support.authz import check_request, check_stub
from prometheus_client.parser import text_string_to_metric_families

from authz_server._app import build_components
from authz_server._server import build_server
from authz_server.config import parse_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_decisions_durations_and_lookup_sources_are_exported(tmp_path: Path) -> None:
    def gerrit(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/a/accounts/self"
        return httpx.Response(200, text=')]}\'\n{"_account_id": 7, "username": "alice"}')

    secret = tmp_path / "pw"
    secret.write_text("bot-password")
    config = parse_config(
        {
            "server": {"listen": "127.0.0.1:0", "admin_listen": None, "metrics_listen": "127.0.0.1:0"},
            "gerrit": {"url": "http://gerrit.invalid", "username": "bot", "password_file": str(secret)},
            "identity": [{"gerrit_http_credentials": {}}],
            "rules": [
                {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"},
                {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
            ],
        }
    )
    app = build_server(config, build_components(config, transport=httpx.MockTransport(gerrit)))
    await app.start()
    try:
        auth = {"authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
        async with check_stub(app.address) as stub:
            await stub.Check(check_request("GET", "/healthz"), timeout=5)
            await stub.Check(check_request("GET", "/x"), timeout=5)
            await stub.Check(check_request("GET", "/x", auth), timeout=5)
            await stub.Check(check_request("GET", "/x", auth), timeout=5)
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(f"http://{app.metrics_address}/metrics")).text
    finally:
        await app.stop(grace=0)
    got = samples(scraped)

    def decisions(**labels: str) -> float:
        return got[("gerrit_authz_decisions_total", tuple(sorted(labels.items())))]

    assert decisions(allowed="true", http_status="200", code="", rule="health", mode="enforce") == 1
    denied = {"allowed": "false", "http_status": "401", "code": "missing_credentials", "rule": "signed-in"}
    assert decisions(**denied, mode="enforce") == 1
    assert decisions(allowed="true", http_status="200", code="", rule="signed-in", mode="enforce") == 2
    assert got[("gerrit_authz_check_duration_seconds_count", ())] == 4
    assert "alice" not in scraped and "YWxpY2U6cHc=" not in scraped  # no identities, no credentials


def test_metrics_are_off_unless_configured() -> None:
    config = parse_config(
        {
            "gerrit": {"url": "http://g", "username": "u", "password_env": "P"},
            "rules": [{"name": "r", "require": "anyone"}],
        }
    )
    assert config.server.metrics_listen is None


@pytest.mark.parametrize("address", ["9003", "host:", ":x"])
def test_metrics_listen_must_be_host_port(address: str) -> None:
    from authz_server.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "server": {"metrics_listen": address},
                "gerrit": {"url": "http://g", "username": "u", "password_env": "P"},
                "rules": [{"name": "r", "require": "anyone"}],
            }
        )
    assert err.value.errors[0][0] == "server.metrics_listen"
