"""JwtVerifier against real HTTP servers on 127.0.0.1: the ``oidc-provider-mock`` OIDC provider (discovery, JWKS
and tokens from its authorization-code flow), and a discovery/JWKS server the test controls (key rotation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from _support.oidc import (
    JwksServer,
    OidcProviderMock,
    SigningKey,
    hs256_with_public_key,
    make_claims,
    unsigned_token,
)

from authz_server._deadline import Deadline
from authz_server._identity.jwt import JwtVerifier
from authz_server.config import JwtConfig
from authz_server.errors import Unauthenticated, Unavailable

CLIENT_ID = "gerrit-authz-demo"
AUD = "gerrit-authz"
USERS = [{"sub": "alice", "email": "alice@example.com", "name": "Alice"}]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProviderMock]:
    with OidcProviderMock(USERS) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def deadline() -> Deadline:
    return Deadline.after(5)


async def refused(verifier: JwtVerifier, token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token, deadline())
    assert (info.value.code, info.value.reason) == ("invalid_token", reason)
    assert token not in str(info.value)


# -- oidc-provider-mock ---------------------------------------------------------------------------------------


async def test_token_from_real_oidc_provider(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    tokens = await asyncio.to_thread(provider.tokens, client_id=CLIENT_ID, sub="alice")
    verifier = JwtVerifier(JwtConfig(issuer=provider.issuer, audiences=[CLIENT_ID]), http)
    claims = await verifier.verify(tokens["id_token"], deadline())
    assert claims["iss"] == provider.issuer
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert CLIENT_ID in claims["aud"]


async def test_real_provider_token_for_another_client(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    tokens = await asyncio.to_thread(provider.tokens, client_id="some-other-app", sub="alice")
    verifier = JwtVerifier(JwtConfig(issuer=provider.issuer, audiences=[CLIENT_ID]), http)
    await refused(verifier, tokens["id_token"], "wrong audience")


async def test_real_provider_tampered_token(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    alice = await asyncio.to_thread(provider.tokens, client_id=CLIENT_ID, sub="alice")
    mallory = await asyncio.to_thread(provider.tokens, client_id=CLIENT_ID, sub="mallory")
    head, payload, sig = alice["id_token"].split(".")
    other = mallory["id_token"].split(".")[1]
    verifier = JwtVerifier(JwtConfig(issuer=provider.issuer, audiences=[CLIENT_ID]), http)
    await verifier.verify(f"{head}.{payload}.{sig}", deadline())
    await refused(verifier, f"{head}.{other}.{sig}", "bad signature")


async def test_real_provider_issuer_must_match_exactly(provider: OidcProviderMock, http: httpx.AsyncClient) -> None:
    # Discovery lives at the same URL, but names the issuer without the trailing slash: no key is trusted.
    token = (await asyncio.to_thread(provider.tokens, client_id=CLIENT_ID, sub="alice"))["id_token"]
    verifier = JwtVerifier(JwtConfig(issuer=provider.issuer + "/", audiences=[CLIENT_ID]), http)
    with pytest.raises(Unavailable) as info:
        await verifier.verify(token, deadline())
    assert info.value.code == "jwks_unavailable"
    assert "different issuer" in info.value.reason


# -- a JWKS server the test controls --------------------------------------------------------------------------


def verifier_for(server: JwksServer, http: httpx.AsyncClient, **overrides: object) -> JwtVerifier:
    config = JwtConfig.model_validate(
        {"issuer": server.issuer, "audiences": [AUD], "jwks_min_refresh_interval": 0.2, **overrides}
    )
    return JwtVerifier(config, http)


async def test_key_rotation_over_real_http(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    k1, k2 = SigningKey.rsa("k1"), SigningKey.ec("k2")
    jwks_server.set_keys(k1)
    verifier = verifier_for(jwks_server, http)
    now = time.time()

    claims = await verifier.verify(k1.sign(make_claims(jwks_server.issuer, AUD, now=now)), deadline())
    assert claims["sub"] == "user-1"
    assert jwks_server.requests == ["/.well-known/openid-configuration", "/jwks"]

    jwks_server.set_keys(k2)  # the issuer rotates: k1 retired, k2 new
    await asyncio.sleep(0.25)  # past jwks_min_refresh_interval
    claims = await verifier.verify(k2.sign(make_claims(jwks_server.issuer, AUD, now=now, sub="bob")), deadline())
    assert claims["sub"] == "bob"
    assert jwks_server.count("/jwks") == 2

    # k1 is gone from the refreshed set: a fresh k1 token no longer verifies.
    await refused(verifier, k1.sign(make_claims(jwks_server.issuer, AUD, now=now, sub="carol")), "unknown signing key")


async def test_denials_over_real_http(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    key = SigningKey.rsa("k1")
    jwks_server.set_keys(key)
    verifier = verifier_for(jwks_server, http)
    iss, now = jwks_server.issuer, time.time()

    await verifier.verify(key.sign(make_claims(iss, AUD, now=now)), deadline())
    await refused(verifier, key.sign(make_claims(iss, AUD, now=now - 3600)), "token expired")
    await refused(verifier, key.sign(make_claims(iss, "someone-else", now=now)), "wrong audience")
    await refused(verifier, key.sign(make_claims("https://evil.example", AUD, now=now)), "wrong issuer")
    await refused(verifier, unsigned_token(make_claims(iss, AUD, now=now), kid="k1"), "algorithm none not allowed")
    await refused(verifier, hs256_with_public_key(key, make_claims(iss, AUD, now=now)), "algorithm HS256 not allowed")


async def test_issuer_outage_over_real_http(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    key = SigningKey.ed25519("k1")
    jwks_server.set_keys(key)
    jwks_server.down = True
    verifier = verifier_for(jwks_server, http, jwks_ttl=0.2)
    iss = jwks_server.issuer
    with pytest.raises(Unavailable):
        await verifier.verify(key.sign(make_claims(iss, AUD, now=time.time())), deadline())

    jwks_server.down = False
    await asyncio.sleep(0.25)
    await verifier.verify(key.sign(make_claims(iss, AUD, now=time.time())), deadline())

    jwks_server.down = True  # keys go stale while the issuer is down: the cached ones keep working
    await asyncio.sleep(0.25)
    await verifier.verify(key.sign(make_claims(iss, AUD, now=time.time(), sub="later")), deadline())


async def test_configured_jwks_url_over_real_http(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    key = SigningKey.ec("k1", "ES384")
    jwks_server.set_keys(key, with_alg=True)
    verifier = verifier_for(jwks_server, http, jwks_url=jwks_server.jwks_url)
    await verifier.verify(key.sign(make_claims(jwks_server.issuer, AUD, now=time.time())), deadline())
    assert jwks_server.requests == ["/jwks"]
