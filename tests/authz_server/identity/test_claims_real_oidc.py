"""Claim requirements and ``max_token_lifetime`` on tokens from the real ``oidc-provider-mock`` OIDC provider,
decided by the real Authorizer (JwtSource + JwtVerifier over HTTP). Claim requirements never ask Gerrit, so the
Gerrit side is a double that knows no accounts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from _support.factories import FakeFacts, make_authorizer, make_input
from _support.oidc import JwksServer, OidcProviderMock, SigningKey, make_claims

from authz_server._admin import explain_response
from authz_server._deadline import Deadline
from authz_server._identity import JwtSource
from authz_server._identity.jwt import JwtVerifier
from authz_server.config import JwtConfig
from authz_server.errors import Unauthenticated, status_for

CLIENT_ID = "gerrit-authz-demo"
USERS = [
    {"sub": "deployer", "email": "deployer@example.com", "scope": "deploy:platform/build read", "groups": ["ci"]},
    {"sub": "reader", "email": "reader@example.com", "scope": "read", "groups": ["ci", "release"]},
]
RULES = [
    {
        "name": "deploy",
        "match": {"path": "/deploy/{project:path}"},
        "require": {"claim": {"name": "scope", "contains": "deploy:{project}"}},
    },
    {
        "name": "release",
        "match": {"path_prefix": "/release"},
        "require": {"claim": {"name": "groups", "contains": "release"}},
    },
    {"name": "anyone", "require": "anyone"},
]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProviderMock]:
    with OidcProviderMock(USERS, token_max_age=3600) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def token(provider: OidcProviderMock, sub: str) -> str:
    body = await asyncio.to_thread(provider.tokens, client_id=CLIENT_ID, sub=sub)
    value: str = body["id_token"]
    return value


async def decide(
    provider: OidcProviderMock, http: httpx.AsyncClient, bearer: str, path: str, **jwt: Any
) -> tuple[int, str]:
    config = JwtConfig(issuer=provider.issuer, audiences=[CLIENT_ID], **jwt)
    authorizer = make_authorizer(RULES, FakeFacts(), [JwtSource(config, JwtVerifier(config, http))])
    decision = await authorizer.decide(
        make_input("GET", path, {"authorization": f"Bearer {bearer}"}), Deadline.after(5)
    )
    status = 200 if decision.allowed else status_for(decision.error).http
    return status, decision.reason


async def test_scope_with_and_without_the_word(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    deployer, reader = await token(provider, "deployer"), await token(provider, "reader")
    assert (await decide(provider, http, deployer, "/deploy/platform%2Fbuild"))[0] == 200
    status, reason = await decide(provider, http, deployer, "/deploy/platform%2Fsecret")
    assert status == 403 and "not in the token" in reason
    assert (await decide(provider, http, reader, "/deploy/platform%2Fbuild"))[0] == 403


async def test_list_groups_claim(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    assert (await decide(provider, http, await token(provider, "reader"), "/release/x"))[0] == 200
    assert (await decide(provider, http, await token(provider, "deployer"), "/release/x"))[0] == 403


async def test_lifetime_above_the_maximum_is_401(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    bearer = await token(provider, "reader")  # the provider issues tokens valid for an hour
    status, reason = await decide(provider, http, bearer, "/release/x", max_token_lifetime="10m")
    assert status == 401
    assert reason == "token lifetime 3600s exceeds max_token_lifetime 600s"
    assert bearer not in reason
    assert (await decide(provider, http, bearer, "/release/x", max_token_lifetime="2h"))[0] == 200


async def test_iat_is_required_when_a_maximum_is_set(http: httpx.AsyncClient) -> None:
    key = SigningKey.rsa()
    with JwksServer() as issuer:
        issuer.set_keys(key)
        now = time.time()
        config = JwtConfig(issuer=issuer.issuer, audiences=[CLIENT_ID], max_token_lifetime="5m")
        verifier = JwtVerifier(config, http)
        assert await verifier.verify(
            key.sign(make_claims(issuer.issuer, CLIENT_ID, now=now, lifetime=300)), Deadline.after(5)
        )
        for claims, reason in [
            (
                make_claims(issuer.issuer, CLIENT_ID, now=now, iat=None),
                "missing claim iat (required by max_token_lifetime)",
            ),
            (
                make_claims(issuer.issuer, CLIENT_ID, now=now, lifetime=301),
                "token lifetime 301s exceeds max_token_lifetime 300s",
            ),
        ]:
            with pytest.raises(Unauthenticated) as info:
                await verifier.verify(key.sign(claims), Deadline.after(5))
            assert (info.value.code, info.value.reason) == ("invalid_token", reason)
        # Without a maximum, iat stays optional.
        lax = JwtVerifier(JwtConfig(issuer=issuer.issuer, audiences=[CLIENT_ID]), http)
        assert await lax.verify(key.sign(make_claims(issuer.issuer, CLIENT_ID, now=now, iat=None)), Deadline.after(5))


async def test_explain_shows_the_claim_type_never_its_value(
    provider: OidcProviderMock, http: httpx.AsyncClient
) -> None:
    bearer = await token(provider, "deployer")
    config = JwtConfig(issuer=provider.issuer, audiences=[CLIENT_ID])
    authorizer = make_authorizer(RULES, FakeFacts(), [JwtSource(config, JwtVerifier(config, http))])
    inp = make_input("GET", "/deploy/platform%2Fsecret", {"authorization": f"Bearer {bearer}"})
    decision = await authorizer.decide(inp, Deadline.after(5))
    explained = explain_response(decision, b"", 5)
    (trace,) = explained.requirements
    assert (trace.kind, trace.target, trace.result) == (
        "claim",
        "scope contains 'deploy:platform/secret'",
        "unsatisfied",
    )
    assert trace.detail == "claim is string of 2 word(s); not matched"
    text = str(explained)
    assert "deploy:platform/build" not in text and bearer not in text
