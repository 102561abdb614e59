"""mTLS machine identities through the real Envoy: a TLS listener that requires client certificates signed by a
CA the test makes; Envoy reports the validated certificate's SPIFFE URI as ``source.principal``, gerrit-authz maps
it to a real Gerrit service user and checks a ``permission:`` rule as that account."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from _support.authz import make_config, running_server
from _support.envoy import EchoUpstream, EnvoyProcess, add_mtls_listener, example_bootstrap, point_cluster
from _support.gerrit_provision import ensure_service_user
from _support.tls import CertFiles, TestCA

from authz_server._server import AuthzServer

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

SERVICE_USER = "ci-deployer"
SPIFFE = "spiffe://corp.example/ci/{account}"
ARTIFACT = "/artifacts/{project:path}/-/{branch}/{file:path}"
RULES = [
    {
        "name": "ci-artifacts",
        "match": {"path": ARTIFACT},
        "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
    }
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def service_user(gerrit: Any) -> str:
    """A real Gerrit service user (no email, no password: it only ever calls with its certificate)."""
    ensure_service_user(gerrit.server.url, gerrit.org.admin.auth, SERVICE_USER)
    return SERVICE_USER


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, service_user: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzServer]:
    secret = tmp_path_factory.mktemp("authz") / "password"
    secret.write_text(gerrit.org.bot.http_password)
    identity = [{"mtls": {"match": SPIFFE, "account_field": "username"}}, {"gerrit_http_credentials": {}}]
    async with running_server(make_config(gerrit.server.url, secret, identity=identity, rules=RULES)) as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def envoy(
    authz: AuthzServer, echo: EchoUpstream, pki: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EnvoyProcess]:
    bootstrap = example_bootstrap()
    point_cluster(bootstrap, "gerrit_authz", authz.address)
    point_cluster(bootstrap, "upstream", echo.address)
    server = pki.issue("envoy-server", server=True)
    add_mtls_listener(bootstrap, cert=server.cert, key=server.key, ca=pki.cert)
    proc = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path_factory.mktemp("envoy")).start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def send(envoy: EnvoyProcess, pki: TestCA, path: str, client: CertFiles | None) -> httpx.Response:
    url = httpx.URL(envoy.url("mtls").replace("http://", "https://")).copy_with(raw_path=path.encode())
    async with httpx.AsyncClient(verify=pki.client_context(client), timeout=15) as http:
        return await http.get(url)


def checks(envoy: EnvoyProcess) -> int:
    return sum(
        v for k, v in envoy.stats("http.mtls.ext_authz.").items() if k.rsplit(".", 1)[-1] in ("ok", "denied", "error")
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_ci_certificate_is_the_service_user(envoy: EnvoyProcess, pki: TestCA, service_user: str) -> None:
    ci = pki.issue("ci-cert", uri=SPIFFE.format(account=service_user))
    resp = await send(envoy, pki, "/artifacts/platform/build/-/main/out/app.tar", ci)
    assert resp.status_code == 200, resp.text
    seen = resp.json()["headers"]
    assert seen["x-gerrit-username"] == service_user
    assert seen["x-authz-rule"] == "ci-artifacts"
    # The same account has no read on the restricted project: the permission really is checked as ci-deployer.
    denied = await send(envoy, pki, "/artifacts/platform/secret/-/main/out/app.tar", ci)
    assert denied.status_code == 403, denied.text
    assert service_user in denied.json()["reason"]


@pytest.mark.asyncio(loop_scope="session")
async def test_unmatched_principal_is_no_identity(envoy: EnvoyProcess, pki: TestCA) -> None:
    other = pki.issue("other-cert", uri="spiffe://other.example/ci/ci-deployer")
    resp = await send(envoy, pki, "/artifacts/platform/build/-/main/out/app.tar", other)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "missing_credentials"
    subject_only = pki.issue("subject-only")  # no URI SAN: Envoy reports the subject, which matches nothing
    assert (await send(envoy, pki, "/artifacts/platform/build/-/main/out/app.tar", subject_only)).status_code == 401


@pytest.mark.asyncio(loop_scope="session")
async def test_no_certificate_never_reaches_the_check(envoy: EnvoyProcess, pki: TestCA) -> None:
    before = checks(envoy)
    # TLS 1.3: the client learns of the refusal on its first read (a "certificate required" alert, or a reset);
    # Envoy's own counters below say why it refused.
    with pytest.raises((httpx.TransportError, ssl.SSLError)):
        await send(envoy, pki, "/artifacts/platform/build/-/main/out/app.tar", None)
    stranger_ca = TestCA(pki.directory, "stranger CA")
    forged = stranger_ca.issue("forged", uri=SPIFFE.format(account=SERVICE_USER))
    with pytest.raises((httpx.TransportError, ssl.SSLError)):
        await send(envoy, pki, "/artifacts/platform/build/-/main/out/app.tar", forged)
    assert checks(envoy) == before
    refused = {
        k: v
        for k, v in envoy.stats("listener.").items()
        if k.endswith((".ssl.fail_verify_no_cert", ".ssl.fail_verify_error"))
    }
    for reason in ("fail_verify_no_cert", "fail_verify_error"):  # one handshake refused for each reason
        assert sum(v for k, v in refused.items() if k.endswith(reason)) >= 1, refused
