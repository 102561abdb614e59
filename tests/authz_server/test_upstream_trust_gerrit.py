"""Gerrit and the OIDC provider behind TLS with a private CA: the real test Gerrit behind a TLS-terminating
forwarder, the real ``oidc-provider-mock`` served over https, both with certificates from one test CA.

Each upstream trusts only what is configured for it: with ``gerrit.ca_file`` Gerrit lookups work, without it they
are an outage (503); with a ``jwt`` source's ``ca_file`` tokens verify, without it the issuer's keys cannot be
fetched (503 ``jwks_unavailable``). Neither inherits the other's CA. Never an allow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _support.authz import basic, check_request, check_stub, make_config, running_server
from _support.oidc import OidcProviderMock
from _support.tls import TestCA
from _support.tls_proxy import TlsForwarder
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from authz_server._response import http_response

pytestmark = pytest.mark.gerrit

AUDIENCE = "gerrit-authz-demo"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("corp-pki"), "corp CA")


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.fixture(scope="module")
def gerrit_https(gerrit: Any, pki: TestCA) -> Iterator[TlsForwarder]:
    with TlsForwarder(pki.issue("gerrit-https", server=True), _hostport(gerrit.server.url)) as forwarder:
        yield forwarder


@pytest.fixture(scope="module")
def gerrit_mtls(gerrit: Any, pki: TestCA) -> Iterator[TlsForwarder]:
    """Gerrit behind a proxy that also requires a client certificate from the corp CA."""
    server = pki.issue("gerrit-mtls", server=True)
    with TlsForwarder(server, _hostport(gerrit.server.url), client_ca=pki.cert) as forwarder:
        yield forwarder


@pytest.fixture(scope="module")
def idp(gerrit: Any, pki: TestCA) -> Iterator[OidcProviderMock]:
    cert = pki.issue("idp-https", server=True)
    users = [{"sub": "alice", "email": gerrit.org.alice.email}]
    with OidcProviderMock(users, tls=(cert.cert, cert.key, pki.cert)) as provider:
        yield provider


@pytest.fixture(scope="module")
def id_token(idp: OidcProviderMock) -> str:
    return str(idp.tokens(client_id=AUDIENCE, sub="alice")["id_token"])


@pytest.fixture(scope="module")
def secret(gerrit: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "password"
    path.write_text(gerrit.org.bot.http_password)
    return path


def trust_config(
    gerrit_url: str, secret: Path, idp: OidcProviderMock, *, gerrit: dict[str, Any], jwt: dict[str, Any]
) -> Any:
    identity = [
        {"jwt": {"issuer": idp.issuer, "audiences": [AUDIENCE], **jwt}},
        {"gerrit_http_credentials": {}},
    ]
    return make_config(gerrit_url, secret, identity=identity, gerrit=gerrit)


async def decide(address: str, headers: dict[str, str]) -> CheckResponse:
    async with check_stub(address) as stub:
        return await stub.Check(check_request("GET", "/dashboard", headers), timeout=10)


def outcome(resp: CheckResponse) -> tuple[int, str]:
    """``(0, username)`` for an allow, else ``(HTTP status, error code)``."""
    if resp.status.code == 0:
        headers = {h.header.key: h.header.value for h in resp.ok_response.headers}
        return 0, headers.get("x-gerrit-username", "")
    answer = http_response(resp)  # a 503 goes as error_response
    return answer.status.code, json.loads(answer.body)["error"]


@pytest.fixture
def cases(
    gerrit: Any, gerrit_https: TlsForwarder, secret: Path, idp: OidcProviderMock, pki: TestCA, id_token: str
) -> Any:
    alice = gerrit.org.alice

    async def run(*, gerrit_ca: bool, jwt_ca: bool) -> tuple[tuple[int, str], tuple[int, str]]:
        config = trust_config(
            gerrit_https.url,
            secret,
            idp,
            gerrit={"ca_file": str(pki.cert)} if gerrit_ca else {},
            jwt={"ca_file": str(pki.cert)} if jwt_ca else {},
        )
        async with running_server(config) as app:
            by_password = outcome(
                await decide(app.address, {"authorization": basic(alice.username, alice.http_password)})
            )
            by_token = outcome(await decide(app.address, {"authorization": f"Bearer {id_token}"}))
        return by_password, by_token

    return run


@pytest.mark.asyncio(loop_scope="session")
async def test_each_upstream_trusts_its_own_ca_file(cases: Any) -> None:
    assert await cases(gerrit_ca=True, jwt_ca=True) == ((0, "alice"), (0, "alice"))


@pytest.mark.asyncio(loop_scope="session")
async def test_without_the_ca_both_lookups_are_outages(cases: Any) -> None:
    assert await cases(gerrit_ca=False, jwt_ca=False) == ((503, "gerrit_unavailable"), (503, "jwks_unavailable"))


@pytest.mark.asyncio(loop_scope="session")
async def test_neither_upstream_inherits_the_others_ca(cases: Any) -> None:
    # The IdP's certificate comes from the very CA gerrit.ca_file names: it is still not trusted for the IdP.
    assert await cases(gerrit_ca=True, jwt_ca=False) == ((0, "alice"), (503, "jwks_unavailable"))
    # Gerrit does not inherit jwt.ca_file. The token itself verifies (its issuer's keys were fetched: no
    # jwks_unavailable); only the lookup of its Gerrit account is the outage.
    assert await cases(gerrit_ca=False, jwt_ca=True) == ((503, "gerrit_unavailable"), (503, "gerrit_unavailable"))


@pytest.mark.asyncio(loop_scope="session")
async def test_client_certificate_towards_gerrit(
    gerrit: Any, gerrit_mtls: TlsForwarder, secret: Path, idp: OidcProviderMock, pki: TestCA
) -> None:
    alice = gerrit.org.alice
    creds = {"authorization": basic(alice.username, alice.http_password)}
    client = pki.issue("authz-to-gerrit")
    with_cert = {"ca_file": str(pki.cert), "client_cert_file": str(client.cert), "client_key_file": str(client.key)}
    async with running_server(trust_config(gerrit_mtls.url, secret, idp, gerrit=with_cert, jwt={})) as app:
        assert outcome(await decide(app.address, creds)) == (0, "alice")
    async with running_server(
        trust_config(gerrit_mtls.url, secret, idp, gerrit={"ca_file": str(pki.cert)}, jwt={})
    ) as app:
        assert outcome(await decide(app.address, creds)) == (503, "gerrit_unavailable")


@pytest.mark.asyncio(loop_scope="session")
async def test_rotated_client_certificate_towards_gerrit_needs_no_restart(
    gerrit: Any, gerrit_mtls: TlsForwarder, secret: Path, idp: OidcProviderMock, pki: TestCA, tmp_path: Path
) -> None:
    alice = gerrit.org.alice
    creds = {"authorization": basic(alice.username, alice.http_password)}
    live_cert, live_key = tmp_path / "client.crt", tmp_path / "client.key"
    wrong = TestCA(tmp_path, "stranger CA").issue("authz-to-gerrit-old")  # a CA the Gerrit proxy does not accept
    live_cert.write_bytes(wrong.cert.read_bytes())
    live_key.write_bytes(wrong.key.read_bytes())
    gerrit_cfg = {"ca_file": str(pki.cert), "client_cert_file": str(live_cert), "client_key_file": str(live_key)}
    async with running_server(trust_config(gerrit_mtls.url, secret, idp, gerrit=gerrit_cfg, jwt={})) as app:
        assert outcome(await decide(app.address, creds)) == (503, "gerrit_unavailable")
        rotated = pki.issue("authz-to-gerrit-new")
        live_cert.write_bytes(rotated.cert.read_bytes())  # the certificate first: the pair disagrees meanwhile
        await asyncio.sleep(1.1)
        assert outcome(await decide(app.address, creds)) == (503, "gerrit_unavailable")
        live_key.write_bytes(rotated.key.read_bytes())
        await asyncio.sleep(1.1)  # the files are looked at at most once a second
        assert outcome(await decide(app.address, creds)) == (0, "alice")


@pytest.mark.asyncio(loop_scope="session")
async def test_a_rotated_ca_bundle_is_followed_both_ways_without_a_restart(
    gerrit: Any, gerrit_https: TlsForwarder, secret: Path, idp: OidcProviderMock, pki: TestCA, tmp_path: Path
) -> None:
    """``gerrit.ca_file`` re-read when it changes: a CA added is trusted by the next lookup, and a CA removed is
    no longer trusted by the next one either, although a connection made under it is still open."""
    org = gerrit.org
    live_ca = tmp_path / "bundle.pem"
    stranger = TestCA(tmp_path, "stranger CA")
    live_ca.write_bytes(stranger.cert.read_bytes())
    config = trust_config(gerrit_https.url, secret, idp, gerrit={"ca_file": str(live_ca)}, jwt={})
    async with running_server(config) as app:
        alice = {"authorization": basic(org.alice.username, org.alice.http_password)}
        assert outcome(await decide(app.address, alice)) == (503, "gerrit_unavailable")
        live_ca.write_bytes(stranger.cert.read_bytes() + pki.cert.read_bytes())  # the corp CA added
        await asyncio.sleep(1.1)  # the files are looked at at most once a second
        assert outcome(await decide(app.address, alice)) == (0, "alice")
        live_ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf a bundle")  # unloadable: the last trust stays
        await asyncio.sleep(1.1)
        bob = {"authorization": basic(org.bob.username, org.bob.http_password)}  # not cached: Gerrit is asked
        assert outcome(await decide(app.address, bob)) == (0, "bob")
        live_ca.write_bytes(stranger.cert.read_bytes())  # the corp CA removed; connections made under it are open
        await asyncio.sleep(1.1)
        carol = {"authorization": basic(org.carol.username, org.carol.http_password)}
        assert outcome(await decide(app.address, carol)) == (503, "gerrit_unavailable")
