"""401 challenges: one ``www-authenticate`` line per configured credential kind (contract, Check semantics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from _support.factories import FakeFacts, basic_auth, make_input, make_rules

from authz_server._admin import explain_response
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer, Decision
from authz_server._facts import Account
from authz_server._identity import BasicCredentialsSource, IdentityResolver
from authz_server._response import challenge_schemes, to_check_response
from authz_server.config import parse_config
from authz_server.errors import Unauthenticated

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
JWT = {"jwt": {"issuer": "https://sso.example.com", "audiences": ["svc"]}}
BASIC: dict[str, Any] = {"gerrit_http_credentials": {}}
ENVOY_JWT: dict[str, Any] = {"envoy_jwt_metadata": {}}
MTLS: dict[str, Any] = {"mtls": {}}


def schemes(identity: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    config = parse_config(
        {
            "gerrit": {"url": "http://127.0.0.1:1", "username": "bot", "password_env": "X"},
            "identity": list(identity),
            "rules": [{"name": "r", "require": "authenticated"}],
        }
    )
    return challenge_schemes(config.identity)


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ([JWT, BASIC], ("Bearer", "Basic")),
        ([BASIC, JWT], ("Basic", "Bearer")),
        ([BASIC], ("Basic",)),
        ([JWT, ENVOY_JWT], ("Bearer",)),  # two token sources, one challenge
        ([MTLS, BASIC], ("Basic",)),  # a certificate cannot be asked for in HTTP
        ([MTLS], ("Bearer",)),  # RFC 9110: a 401 always carries a challenge
        ([], ("Bearer",)),
    ],
)
def test_one_scheme_per_configured_credential_kind(identity: list[dict[str, Any]], expected: tuple[str, ...]) -> None:
    assert schemes(identity) == expected


async def decide(headers: dict[str, str], challenges: tuple[str, ...]) -> Decision:
    facts = FakeFacts(credentials={("alice", "pw"): ALICE})
    authorizer = Authorizer(
        make_rules([{"name": "signed-in", "require": "authenticated"}]),
        IdentityResolver([BasicCredentialsSource(facts)], facts),
        facts,
        challenges=challenges,
    )
    return await authorizer.decide(make_input("GET", "/x", headers), Deadline.after(5))


def challenge_lines(decision: Decision) -> list[str]:
    response = to_check_response(decision, None)
    assert response.denied_response.status.code == 401
    return [o.header.value for o in response.denied_response.headers if o.header.key == "www-authenticate"]


async def test_wrong_basic_credentials_are_asked_for_basic_again() -> None:
    decision = await decide({"authorization": basic_auth("alice", "wrong")}, ("Bearer", "Basic"))
    assert decision.error is not None and decision.error.code == "invalid_credentials"
    # A bad password is not a bad token: no error="invalid_token" on Bearer.
    assert challenge_lines(decision) == ['Bearer realm="gerrit-authz"', 'Basic realm="gerrit-authz"']


async def test_anonymous_gets_every_configured_challenge_each_on_its_own_line() -> None:
    decision = await decide({}, ("Basic", "Bearer"))
    assert decision.error is not None and decision.error.code == "missing_credentials"
    response = to_check_response(decision, None)
    options = [o for o in response.denied_response.headers if o.header.key == "www-authenticate"]
    assert [o.header.value for o in options] == ['Basic realm="gerrit-authz"', 'Bearer realm="gerrit-authz"']
    # The first replaces, the second appends: Envoy then sends two header lines, not one overwritten.
    assert [o.append_action for o in options] == [
        options[0].HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
        options[0].HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD,
    ]


async def test_a_bad_token_keeps_error_invalid_token_on_bearer_only() -> None:
    decision = Decision("d", Unauthenticated("invalid_token", "bad signature"), "r", challenges=("Bearer", "Basic"))
    assert challenge_lines(decision) == [
        'Bearer realm="gerrit-authz", error="invalid_token"',
        'Basic realm="gerrit-authz"',
    ]


async def test_explain_shows_the_challenges_joined() -> None:
    decision = await decide({}, ("Bearer", "Basic"))
    explained = explain_response(decision, b"", 5)
    assert explained.headers["www-authenticate"] == 'Bearer realm="gerrit-authz", Basic realm="gerrit-authz"'


async def test_other_denials_carry_no_challenge() -> None:
    facts = FakeFacts(credentials={("alice", "pw"): ALICE})
    authorizer = Authorizer(
        make_rules([{"name": "admins", "require": {"group": "Administrators"}}]),
        IdentityResolver([BasicCredentialsSource(facts)], facts),
        facts,
        challenges=("Basic",),
    )
    decision = await authorizer.decide(
        make_input("GET", "/x", {"authorization": basic_auth("alice", "pw")}), Deadline.after(5)
    )
    response = to_check_response(decision, None)
    assert response.denied_response.status.code == 403
    assert "www-authenticate" not in {o.header.key for o in response.denied_response.headers}
