"""OIDC bearer tokens mapped to real Gerrit accounts by their email claim."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from _support.authz import check_request, check_stub, make_config, running_server
from _support.oidc import JwksServer, SigningKey, make_claims

from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit

AUDIENCE = "gerrit-authz-demo"
KEY = SigningKey.rsa(kid="it-1")


@pytest.fixture(scope="module")
def issuer() -> Iterator[JwksServer]:
    server = JwksServer().start()
    server.set_keys(KEY)
    yield server
    server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(
    gerrit: Any, issuer: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AuthzServer]:
    secret = tmp_path_factory.mktemp("jwt") / "password"
    secret.write_text(gerrit.org.bot.http_password)
    identity = [{"jwt": {"issuer": issuer.issuer, "audiences": [AUDIENCE]}}, {"gerrit_http_credentials": {}}]
    async with running_server(make_config(gerrit.server.url, secret, identity=identity)) as app:
        yield app


def bearer(issuer: JwksServer, email: str, **extra: Any) -> dict[str, str]:
    claims = make_claims(issuer.issuer, AUDIENCE, now=time.time(), email=email, **extra)
    return {"authorization": "Bearer " + KEY.sign(claims)}


async def test_token_email_maps_to_the_gerrit_account(authz: AuthzServer, gerrit: Any, issuer: JwksServer) -> None:
    alice = gerrit.org.alice
    async with check_stub(authz.address) as stub:
        resp = await stub.Check(
            check_request("POST", f"/deploy/{gerrit.org.change_merged.number}", bearer(issuer, alice.email)), timeout=10
        )
    assert resp.status.code == 0, resp.denied_response.body
    headers = {h.header.key: h.header.value for h in resp.ok_response.headers}
    assert (headers["x-gerrit-account-id"], headers["x-gerrit-username"]) == (str(alice.account_id), "alice")


async def test_token_without_a_gerrit_account_is_authenticated_but_fails_gerrit_requirements(
    authz: AuthzServer, issuer: JwksServer
) -> None:
    async with check_stub(authz.address) as stub:
        signed_in = await stub.Check(
            check_request("GET", "/dashboard", bearer(issuer, "ghost@example.com")), timeout=10
        )
        artifact = await stub.Check(
            check_request("GET", "/artifacts/platform%2Fbuild/-/main/x", bearer(issuer, "ghost@example.com")),
            timeout=10,
        )
    assert signed_in.status.code == 0
    assert "x-gerrit-account-id" not in {h.header.key for h in signed_in.ok_response.headers}
    assert artifact.denied_response.status.code == 403
    assert "no Gerrit account" in json.loads(artifact.denied_response.body)["reason"]


async def test_expired_token_is_401_invalid_token(authz: AuthzServer, gerrit: Any, issuer: JwksServer) -> None:
    token = bearer(issuer, gerrit.org.alice.email, exp=int(time.time()) - 600, iat=int(time.time()) - 900)
    async with check_stub(authz.address) as stub:
        resp = await stub.Check(check_request("GET", "/dashboard", token), timeout=10)
    assert resp.denied_response.status.code == 401
    challenges = [h.header.value for h in resp.denied_response.headers if h.header.key == "www-authenticate"]
    # jwt then gerrit_http_credentials are configured: the bad token is named on Bearer, and Basic is offered.
    assert challenges == ['Bearer realm="gerrit-authz", error="invalid_token"', 'Basic realm="gerrit-authz"']
    assert json.loads(resp.denied_response.body)["error"] == "invalid_token"
