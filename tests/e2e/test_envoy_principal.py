"""The client-certificate principal, read by real Envoy and by fastapi_client from the same certificates.

Envoy's ext_authz reports ``attributes.source.principal`` as the first URI SAN, else the first DNS SAN, else the
subject. ``fastapi_client`` must read a certificate the same way, or one certificate would be two identities
(matching an ``mtls`` source behind the middleware and not behind Envoy, or the reverse). Envoy's Check goes to
``FakeAuthorizer``, which records the CheckRequest exactly as Envoy sent it: no Gerrit needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from _support.envoy import EchoUpstream, EnvoyProcess, add_mtls_listener, example_bootstrap, point_cluster
from _support.tls import CertFiles, TestCA

from fastapi_client._tls import client_cert_principal
from fastapi_client.testing import FakeAuthorizer

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeAuthorizer]:
    async with FakeAuthorizer() as authorizer:
        yield authorizer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def envoy(fake: FakeAuthorizer, pki: TestCA, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    server = pki.issue("envoy-server", server=True)
    bootstrap = example_bootstrap()
    point_cluster(bootstrap, "gerrit_authz", fake.target)
    with EchoUpstream() as echo:
        point_cluster(bootstrap, "upstream", echo.address)
        add_mtls_listener(bootstrap, cert=server.cert, key=server.key, ca=pki.cert)
        proc = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path_factory.mktemp("envoy")).start)
        try:
            yield proc
        finally:
            await asyncio.to_thread(proc.stop)


async def envoys_principal(envoy: EnvoyProcess, fake: FakeAuthorizer, pki: TestCA, cert: CertFiles) -> str:
    fake.clear()
    fake.allow(rule="principal")
    url = envoy.url("mtls").replace("http://", "https://") + "/dashboard"
    async with httpx.AsyncClient(verify=pki.client_context(cert), timeout=15) as http:
        resp = await http.get(url)
    assert resp.status_code == 200, resp.text
    principal: str = fake.last_request.attributes.source.principal
    return principal


def middlewares_principal(cert: CertFiles) -> str:
    """What AuthzMiddleware sends for this certificate once the ASGI server verified it."""
    scope = {"extensions": {"tls": {"client_cert_chain": [cert.cert.read_text()], "client_cert_error": None}}}
    return client_cert_principal(scope)


CASES = {
    "uri-and-dns": {"uri": "spiffe://corp.example/ci/ci-deployer", "dns": ("ci.corp.example",)},
    "dns-only": {"dns": ("build-7.ci.corp.example",)},
    "two-dns": {"dns": ("first.corp.example", "second.corp.example")},
    "subject-only": {},
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_middleware_reads_the_principal_envoy_reports(
    envoy: EnvoyProcess, fake: FakeAuthorizer, pki: TestCA, case: str
) -> None:
    cert = pki.issue(f"client-{case}", **CASES[case])
    from_envoy = await envoys_principal(envoy, fake, pki, cert)
    assert from_envoy, "Envoy reported no principal for a certificate it verified"
    assert middlewares_principal(cert) == from_envoy


async def test_a_dns_san_beats_the_subject(envoy: EnvoyProcess, fake: FakeAuthorizer, pki: TestCA) -> None:
    cert = pki.issue("dns-client", dns=("build-7.ci.corp.example", "other.corp.example"))
    assert await envoys_principal(envoy, fake, pki, cert) == "build-7.ci.corp.example"
    assert middlewares_principal(cert) == "build-7.ci.corp.example"
