"""The identity sources' hardening: strict account keys from token claims, email_verified, the Basic size cap."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from _support.factories import FakeFacts, make_input

from authz_server._deadline import Deadline
from authz_server._facts import Account
from authz_server._identity import BasicCredentialsSource, EnvoyJwtMetadataSource, IdentityResolver
from authz_server._identity._sources import MAX_BASIC_CREDENTIAL
from authz_server.config import EnvoyJwtMetadataConfig
from authz_server.errors import Unauthenticated

CAROL = Account(1000004, "carol", "carol@example.com")
FILTER = "envoy.filters.http.jwt_authn"


def envoy_input(payload: dict[str, Any]) -> Any:
    return make_input("GET", "/x", metadata={FILTER: {"jwt_payload": payload}})


async def resolve(config: EnvoyJwtMetadataConfig, payload: dict[str, Any], facts: FakeFacts) -> Any:
    resolver = IdentityResolver([EnvoyJwtMetadataSource(config)], facts)
    return await resolver.resolve(envoy_input(payload), Deadline.after(5))


@pytest.mark.parametrize("claim", ["self", "me", "1000004", "carol", "Carol <carol@example.com>", ".."])
async def test_envoy_metadata_claims_in_special_forms_never_reach_gerrit(claim: str) -> None:
    # The double would answer for any value: only the strict key check keeps these from being looked up.
    facts = FakeFacts(accounts={claim: CAROL})
    identity = await resolve(EnvoyJwtMetadataConfig(), {"sub": "x", "email": claim}, facts)
    assert identity.authenticated and identity.account is None
    assert facts.calls == []


async def test_envoy_metadata_maps_by_the_configured_field() -> None:
    facts = FakeFacts(accounts={"carol": CAROL})
    config = EnvoyJwtMetadataConfig(account_claim="preferred_username", account_field="username")
    identity = await resolve(config, {"sub": "x", "preferred_username": "carol"}, facts)
    assert identity.account == CAROL
    assert facts.calls == [("account", ("carol",))]


@pytest.mark.parametrize("verified", [False, "false", 0, "no"])
async def test_unverified_email_is_refused(verified: object) -> None:
    identity = await resolve(
        EnvoyJwtMetadataConfig(), {"email": "carol@example.com", "email_verified": verified}, FakeFacts()
    )
    assert isinstance(identity.error, Unauthenticated)
    assert identity.error.code == "invalid_token" and "not verified" in identity.error.reason


@pytest.mark.parametrize("verified", [True, "true", None])
async def test_verified_or_silent_email_is_accepted(verified: object) -> None:
    payload: dict[str, Any] = {"email": "carol@example.com"}
    if verified is not None:
        payload["email_verified"] = verified
    identity = await resolve(EnvoyJwtMetadataConfig(), payload, FakeFacts(accounts={"carol@example.com": CAROL}))
    assert identity.account == CAROL


async def test_unverified_email_may_be_allowed_explicitly_or_ignored_for_other_fields() -> None:
    facts = FakeFacts(accounts={"carol@example.com": CAROL, "carol": CAROL})
    lax = EnvoyJwtMetadataConfig(require_verified_email=False)
    assert (await resolve(lax, {"email": "carol@example.com", "email_verified": False}, facts)).account == CAROL
    by_name = EnvoyJwtMetadataConfig(account_claim="preferred_username", account_field="username")
    payload = {"preferred_username": "carol", "email_verified": False}
    assert (await resolve(by_name, payload, facts)).account == CAROL


def basic_header(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


async def test_oversized_basic_credentials_are_refused_without_asking_gerrit() -> None:
    facts = FakeFacts(credentials={("carol", "p" * 5000): CAROL})
    headers = basic_header("carol", "p" * 5000)
    assert len(headers["authorization"]) > MAX_BASIC_CREDENTIAL
    identity = await IdentityResolver([BasicCredentialsSource(facts)], facts).resolve(
        make_input("GET", "/x", headers), Deadline.after(5)
    )
    assert isinstance(identity.error, Unauthenticated) and identity.error.code == "invalid_credentials"
    assert facts.calls == []


async def test_basic_credentials_just_under_the_cap_are_verified() -> None:
    password = "p" * 3000
    facts = FakeFacts(credentials={("carol", password): CAROL})
    identity = await IdentityResolver([BasicCredentialsSource(facts)], facts).resolve(
        make_input("GET", "/x", basic_header("carol", password)), Deadline.after(5)
    )
    assert identity.account == CAROL
