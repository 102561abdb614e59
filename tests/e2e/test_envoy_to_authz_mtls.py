"""The hop from Envoy to gerrit-authz over mTLS, with the real Envoy: its ext_authz cluster speaks TLS with its own
client certificate (a SPIFFE URI SAN), gerrit-authz requires client certificates from the test CA and admits only
the SAN listed in ``allowed_callers``. Another Envoy identity (valid certificate, other SAN) and an Envoy without a
certificate never get a request through. The server certificate is then rotated under load: no request fails, and
new handshakes get the new certificate."""

from __future__ import annotations

import asyncio
import copy
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from _support.authz import make_config, running_server
from _support.envoy import (
    EchoUpstream,
    EnvoyProcess,
    add_listener_copy,
    example_bootstrap,
    hcm_of,
    http_filter,
    point_cluster,
)
from _support.tls import CertFiles, TestCA, served_serial
from cryptography import x509

from authz_server._server import AuthzServer

pytestmark = [pytest.mark.envoy]

EDGE = "spiffe://corp.example/ns/edge/sa/envoy"
OTHER = "spiffe://corp.example/ns/dev/sa/envoy"
# Envoy re-connects after this many Checks, so the rotation below is met by fresh handshakes under load.
REQUESTS_PER_CONNECTION = 25


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def live_cert(pki: TestCA) -> CertFiles:
    """The server certificate gerrit-authz reads, at a fixed path the rotation test overwrites."""
    first = pki.issue("authz-1", server=True)
    live = CertFiles(pki.directory / "tls.crt", pki.directory / "tls.key")
    shutil.copy(first.cert, live.cert)
    shutil.copy(first.key, live.key)
    return live


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(
    pki: TestCA, live_cert: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AuthzServer]:
    secret = tmp_path_factory.mktemp("authz") / "password"
    secret.write_text("unused: the rules below never ask Gerrit")
    tls = {
        "cert_file": str(live_cert.cert),
        "key_file": str(live_cert.key),
        "client_ca_file": str(pki.cert),
        "allowed_callers": [EDGE],
    }
    # mtls is accepted on this listener only because it requires client certificates (the caller-trust rule).
    identity = [{"mtls": {"match": "spiffe://corp.example/ci/{account}"}}]
    config = make_config("http://127.0.0.1:9", secret, identity=identity, server={"tls": tls})
    async with running_server(config) as app:
        yield app


def tls_cluster(bootstrap: dict[str, Any], name: str, pki: TestCA, client: CertFiles | None) -> None:
    """A copy of the gerrit_authz cluster named ``name`` that speaks TLS (h2 by ALPN) to gerrit-authz."""
    clusters = bootstrap["static_resources"]["clusters"]
    cluster = copy.deepcopy(next(c for c in clusters if c["name"] == "gerrit_authz"))
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
    cluster["max_requests_per_connection"] = REQUESTS_PER_CONNECTION
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": str(pki.cert)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
        },
    }
    if client is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": str(client.cert)}, "private_key": {"filename": str(client.key)}}
        ]
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": common,
        },
    }
    clusters.append(cluster)


def listener_to(bootstrap: dict[str, Any], listener: str, cluster: str) -> None:
    copy_ = add_listener_copy(bootstrap, "ingress", listener)
    ext = http_filter(hcm_of(copy_), "envoy.filters.http.ext_authz")
    ext["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def envoy(
    authz: AuthzServer, echo: EchoUpstream, pki: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EnvoyProcess]:
    bootstrap = example_bootstrap()
    point_cluster(bootstrap, "gerrit_authz", authz.address)
    point_cluster(bootstrap, "upstream", echo.address)
    tls_cluster(bootstrap, "authz_edge", pki, pki.issue("envoy-edge", uri=EDGE))
    tls_cluster(bootstrap, "authz_other", pki, pki.issue("envoy-other", uri=OTHER))
    tls_cluster(bootstrap, "authz_nocert", pki, None)
    for name in ("edge", "other", "nocert"):
        listener_to(bootstrap, name, f"authz_{name}")
    proc = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path_factory.mktemp("envoy")).start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def get(envoy: EnvoyProcess, listener: str, path: str = "/healthz") -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.get(envoy.url(listener) + path)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_listed_envoy_reaches_the_upstream(envoy: EnvoyProcess, echo: EchoUpstream) -> None:
    before = echo.requests
    resp = await get(envoy, "edge")
    assert resp.status_code == 200, resp.text
    assert resp.json()["headers"]["x-authz-rule"] == "health"
    assert echo.requests == before + 1
    assert envoy.stats("cluster.authz_edge.ssl.handshake")["cluster.authz_edge.ssl.handshake"] >= 1


@pytest.mark.asyncio(loop_scope="session")
async def test_other_san_and_no_certificate_never_get_an_allow(envoy: EnvoyProcess, echo: EchoUpstream) -> None:
    before = echo.requests
    for listener in ("other", "nocert"):
        for _ in range(3):
            resp = await get(envoy, listener)
            # An RPC error or a failed handshake: ext_authz's status_on_error (503), never the upstream.
            assert resp.status_code == 503, (listener, resp.status_code, resp.text)
    assert echo.requests == before
    errors = envoy.stats("http.")
    assert errors.get("http.other.ext_authz.error", 0) >= 3 and errors.get("http.nocert.ext_authz.error", 0) >= 3
    assert errors.get("http.other.ext_authz.ok", 0) == 0 and errors.get("http.nocert.ext_authz.ok", 0) == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_certificate_rotated_under_load(
    envoy: EnvoyProcess, authz: AuthzServer, pki: TestCA, live_cert: CertFiles, echo: EchoUpstream
) -> None:
    probe = pki.issue("probe", uri=EDGE)
    first_serial = served_serial(authz.address, pki, probe)
    handshakes_before = envoy.stats("cluster.authz_edge.ssl.handshake")["cluster.authz_edge.ssl.handshake"]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        async with httpx.AsyncClient(timeout=15) as http:
            deadline = time.monotonic() + 30  # bounded even if the rotation below never ends
            while not stop.is_set() and time.monotonic() < deadline and len(statuses) < 2000:
                statuses.append((await http.get(envoy.url("edge") + "/healthz")).status_code)

    workers = [asyncio.create_task(load()) for _ in range(4)]
    serials = [first_serial]
    for i in (2, 3):
        await asyncio.sleep(0.5)
        new = pki.issue(f"authz-{i}", server=True)
        # As a careless writer would: the certificate first, the key a moment later (the pair disagrees meanwhile).
        shutil.copy(new.cert, live_cert.cert)
        await asyncio.sleep(0.05)
        shutil.copy(new.key, live_cert.key)
        await asyncio.sleep(0.5)
        serials.append(served_serial(authz.address, pki, probe))
        assert serials[-1] == x509.load_pem_x509_certificate(new.cert.read_bytes()).serial_number
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*workers)
    assert len(set(serials)) == 3
    assert len(statuses) >= 100 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    handshakes = envoy.stats("cluster.authz_edge.ssl.handshake")["cluster.authz_edge.ssl.handshake"] - handshakes_before
    # Envoy re-connected many times during the rotation: fresh handshakes met the new certificates.
    assert handshakes >= len(statuses) // REQUESTS_PER_CONNECTION // 2, handshakes
    assert authz.tls is not None and authz.tls.reloads >= 2
    assert envoy.stats("cluster.authz_edge.ssl.connection_error").get("cluster.authz_edge.ssl.connection_error", 0) == 0
