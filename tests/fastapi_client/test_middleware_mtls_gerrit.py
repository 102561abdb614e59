"""Client certificates without Envoy: the example app under a real uvicorn with TLS (``TlsH11Protocol``), the REAL
gerrit-authz with an ``mtls`` source, and the REAL Gerrit, where the certificate's SPIFFE URI names a service user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from _support.authz import make_config, running_server
from _support.gerrit_provision import ensure_service_user
from _support.tls import TestCA
from fastapi_support import example_module, uvicorn_server

from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit

SERVICE_USER = "ci-uploader"
ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
RULES = [
    {
        "name": "ci-artifacts",
        "match": {"path": "/artifacts/{project:path}/-/{branch}/{file:path}"},
        "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
    }
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzServer]:
    account_id = ensure_service_user(gerrit.server.url, gerrit.org.admin.auth, SERVICE_USER)
    assert account_id > 0
    secret = tmp_path_factory.mktemp("secret") / "gerrit-password"
    secret.write_text(gerrit.org.bot.http_password)
    identity = [{"mtls": {"match": "spiffe://corp.example/ci/{account}"}}, {"gerrit_http_credentials": {}}]
    async with running_server(make_config(gerrit.server.url, secret, identity=identity, rules=RULES)) as app:
        yield app


async def test_certificate_principal_is_the_gerrit_service_user(authz: AuthzServer, tmp_path: Path) -> None:
    pki = TestCA(tmp_path)
    ci = pki.issue("ci", uri=f"spiffe://corp.example/ci/{SERVICE_USER}")
    stranger = pki.issue("stranger", uri=f"spiffe://elsewhere.example/ci/{SERVICE_USER}")
    app = example_module().create_app(authz.address, timeout=10.0)
    async with uvicorn_server(app, pki) as base:
        async with httpx.AsyncClient(base_url=base, verify=pki.client_context(ci), timeout=15) as client:
            ok = await client.get(ARTIFACT)
        assert ok.status_code == 200, ok.text
        assert ok.json()["x-gerrit-username"] == SERVICE_USER
        assert ok.json()["x-authz-rule"] == "ci-artifacts"
        for offered in (stranger, None):  # a principal that does not match, and no certificate at all
            async with httpx.AsyncClient(base_url=base, verify=pki.client_context(offered), timeout=15) as client:
                denied = await client.get(ARTIFACT)
            assert denied.status_code == 401, denied.text
            assert denied.json()["error"] == "missing_credentials"
