"""fastapi_client over TLS / mTLS to a real gerrit-authz TLS listener (``allowed_callers``), with its client
certificate re-read when the files change: the next Check goes over a new channel with the new certificate."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from _support.authz import make_config, running_server
from _support.tls import CertFiles, TestCA
from fastapi_support import asgi_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authz_server._server import AuthzServer
from fastapi_client import AuthzMiddleware, ServiceTls

APP = "spiffe://corp.example/ns/apps/sa/artifacts"


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest_asyncio.fixture
async def authz(pki: TestCA, tmp_path: Path) -> AsyncIterator[AuthzServer]:
    server = pki.issue("authz", server=True)
    secret = tmp_path / "password"
    secret.write_text("unused")
    tls = {
        "cert_file": str(server.cert),
        "key_file": str(server.key),
        "client_ca_file": str(pki.cert),
        "allowed_callers": [APP],
    }
    async with running_server(make_config("http://127.0.0.1:9", secret, identity=[], server={"tls": tls})) as app:
        yield app


async def _rule(request: Request) -> JSONResponse:
    return JSONResponse({"rule": request.headers.get("x-authz-rule")})


def app_with(authz: AuthzServer, tls: ServiceTls) -> tuple[Starlette, AuthzMiddleware]:
    app = Starlette(routes=[Route("/healthz", _rule)])
    middleware = AuthzMiddleware(app, target=authz.address, tls=tls, timeout=5)
    return app, middleware


def live_copy(source: CertFiles, live: CertFiles) -> None:
    shutil.copy(source.cert, live.cert)
    shutil.copy(source.key, live.key)


async def test_mtls_client_reaches_the_listener(authz: AuthzServer, pki: TestCA) -> None:
    client = pki.issue("app", uri=APP)
    _, middleware = app_with(authz, ServiceTls(ca_file=pki.cert, cert_file=client.cert, key_file=client.key))
    async with asgi_client(middleware) as http:
        resp = await http.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"rule": "health"}


async def test_wrong_or_missing_certificate_or_trust_fails_closed(
    authz: AuthzServer, pki: TestCA, tmp_path: Path
) -> None:
    other = pki.issue("other", uri="spiffe://corp.example/ns/apps/sa/other")
    stranger = TestCA(tmp_path, "stranger CA")
    for tls in (
        ServiceTls(ca_file=pki.cert, cert_file=other.cert, key_file=other.key),  # PERMISSION_DENIED
        ServiceTls(ca_file=pki.cert),  # no client certificate: no handshake
        ServiceTls(ca_file=stranger.cert, cert_file=other.cert, key_file=other.key),  # the server is not trusted
    ):
        _, middleware = app_with(authz, tls)
        async with asgi_client(middleware) as http:
            resp = await http.get("/healthz")
        assert resp.status_code == 503, (tls, resp.status_code)


async def test_rotated_client_certificate_is_used_by_the_next_check(
    authz: AuthzServer, pki: TestCA, tmp_path: Path
) -> None:
    live = CertFiles(tmp_path / "client.crt", tmp_path / "client.key")
    live_copy(pki.issue("app-1", uri=APP), live)
    tls = ServiceTls(ca_file=pki.cert, cert_file=live.cert, key_file=live.key, check_interval=0)
    _, middleware = app_with(authz, tls)
    async with asgi_client(middleware) as http:
        assert (await http.get("/healthz")).status_code == 200
        # Rotated to a certificate the service does not list: the next Check uses it (and is refused).
        live_copy(pki.issue("app-other", uri="spiffe://corp.example/ns/apps/sa/other"), live)
        assert (await http.get("/healthz")).status_code == 503
        # Half-way through a rotation (new certificate, old key): the working channel stays.
        good = pki.issue("app-2", uri=APP)
        shutil.copy(good.cert, live.cert)
        assert (await http.get("/healthz")).status_code == 503  # still the "other" channel
        shutil.copy(good.key, live.key)
        assert (await http.get("/healthz")).status_code == 200
    assert middleware.channels.rotations == 2


def test_cert_without_key_is_refused() -> None:
    with pytest.raises(ValueError):
        ServiceTls(cert_file="client.crt")
