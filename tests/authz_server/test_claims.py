"""The ``claim`` requirement: parsing, word lists, nested names, captures, three-valued evaluation, the trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from _support.factories import FakeFacts
from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server._claims import claim_matches, filled, parse_claim, resolve_claim
from authz_server._deadline import Deadline
from authz_server._evaluate import Context, Result, TraceEntry, evaluate
from authz_server._facts import Account
from authz_server._identity import ANONYMOUS, Identity, Principal
from authz_server._requirements import RequirementError, parse_requirement
from authz_server.config import parse_config
from authz_server.errors import ConfigError, PermissionDenied, Unauthenticated

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
CLAIMS: dict[str, Any] = {
    "iss": "https://idp.test",
    "sub": "alice",
    "scope": "openid deploy:platform/build read",
    "groups": ["ci", "release"],
    "realm_access": {"roles": ["admin", "viewer"]},
    "level": 3,
    "staff": True,
    "tenant": "acme",
}
TOKEN = Identity(Principal("jwt", "alice", claims=CLAIMS), ALICE, "gerrit")
TOKEN_NO_ACCOUNT = Identity(Principal("jwt", "alice", claims=CLAIMS))
BASIC = Identity(Principal("gerrit_http_credentials", "alice", account=ALICE), ALICE, "gerrit")


async def run(
    require: Any, identity: Identity = TOKEN, captures: Mapping[str, str] | None = None
) -> tuple[Result, list[TraceEntry]]:
    ctx = Context(identity, dict(captures or {}), FakeFacts(), Deadline.after(5))
    return await evaluate(parse_requirement(require), ctx)


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"name": "scope", "contains": "read"}, True),
        ({"name": "scope", "contains": "write"}, False),
        ({"name": "scope", "contains": "deploy:platform/build read"}, False),  # one word, never a phrase
        ({"name": "scope", "equals": "openid deploy:platform/build read"}, True),
        ({"name": "groups", "contains": "release"}, True),
        ({"name": "groups", "any_of": ["ops", "ci"]}, True),
        ({"name": "groups", "any_of": ["ops", "dev"]}, False),
        ({"name": "realm_access.roles", "contains": "admin"}, True),
        ({"name": "realm_access.roles.x", "contains": "admin"}, False),
        ({"name": "realm_access", "contains": "roles"}, False),  # an object holds no words
        ({"name": "missing", "contains": "x"}, False),
        ({"name": "level", "equals": 3}, True),
        ({"name": "level", "equals": "3"}, False),  # type-strict
        ({"name": "staff", "equals": True}, True),
        ({"name": "level", "equals": True}, False),
        ({"name": "staff", "equals": 1}, False),
        ({"name": "tenant", "any_of": ["acme", "other"]}, True),
    ],
)
async def test_operators(spec: dict[str, Any], ok: bool) -> None:
    result, trace = await run({"claim": spec})
    assert result.ok is ok
    assert trace[0].kind == "claim"


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"name": "scope"}, "claim"),
        ({"name": "scope", "equals": "a", "contains": "b"}, "claim"),
        ({"name": "scope", "contains": ""}, "claim.contains"),
        ({"name": "scope", "any_of": []}, "claim.any_of"),
        ({"name": "scope", "any_of": [["nested"]]}, "claim.any_of"),
        ({"name": "", "contains": "x"}, "claim.name"),
        ({"name": "a..b", "contains": "x"}, "claim.name"),
        ({"name": "scope", "contains": "x", "extra": 1}, "claim.extra"),
        ("not a mapping", "claim"),
    ],
)
def test_parse_errors_name_the_key(spec: Any, where: str) -> None:
    with pytest.raises(RequirementError) as info:
        parse_requirement({"claim": spec})
    assert info.value.path == where


def test_bad_claim_in_config_names_the_key_path() -> None:
    data = {
        "gerrit": {"url": "http://g", "username": "bot", "password_env": "X"},
        "rules": [{"name": "r", "require": {"all": ["authenticated", {"claim": {"name": "scope"}}]}}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "rules[0].require.all[1].claim" in str(info.value)


def test_unknown_capture_in_claim_value_is_a_config_error() -> None:
    data = {
        "gerrit": {"url": "http://g", "username": "bot", "password_env": "X"},
        "rules": [
            {
                "name": "r",
                "match": {"path": "/x/{project}"},
                "require": {"claim": {"name": "scope", "contains": "deploy:{repo}"}},
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "repo" in str(info.value)


async def test_capture_fills_the_value() -> None:
    spec = {"claim": {"name": "scope", "contains": "deploy:{project}"}}
    assert (await run(spec, captures={"project": "platform/build"}))[0].ok is True
    assert (await run(spec, captures={"project": "platform/secret"}))[0].ok is False


@pytest.mark.parametrize("capture", ["x read", "platform/build read", "{project}", "*", "platform/build "])
async def test_a_capture_cannot_inject_words(capture: str) -> None:
    spec = {"claim": {"name": "scope", "any_of": ["deploy:{project}", "never"]}}
    assert (await run(spec, captures={"project": capture}))[0].ok is False


def test_resolve_and_match_are_pure() -> None:
    claim, _, _ = parse_claim({"name": "realm_access.roles", "contains": "viewer"})
    assert claim is not None
    assert claim_matches(claim, resolve_claim(CLAIMS, claim.name), claim.values)
    assert not claim_matches(claim, resolve_claim({}, claim.name), claim.values)


async def test_basic_identity_never_satisfies_and_not_cannot_flip_it() -> None:
    spec = {"claim": {"name": "scope", "contains": "read"}}
    result, trace = await run(spec, identity=BASIC)
    assert result.ok is None and isinstance(result.error, PermissionDenied)
    assert "no token claims" in result.reason
    assert trace[0].result == "undecided"
    negated, _ = await run({"not": spec}, identity=BASIC)
    assert negated.ok is None and isinstance(negated.error, PermissionDenied)
    # A decided branch still decides: Basic users pass by the other branch of an any.
    either, _ = await run({"any": [spec, "authenticated"]}, identity=BASIC)
    assert either.ok is True


async def test_anonymous_is_undecided_401() -> None:
    result, _ = await run({"not": {"claim": {"name": "scope", "contains": "read"}}}, identity=ANONYMOUS)
    assert result.ok is None and isinstance(result.error, Unauthenticated)
    assert result.error.code == "missing_credentials"


async def test_bad_token_is_undecided_with_its_error() -> None:
    bad = Identity(error=Unauthenticated("invalid_token", "bad signature"))
    result, _ = await run({"claim": {"name": "scope", "contains": "read"}}, identity=bad)
    assert result.ok is None and result.error is bad.error


async def test_token_without_the_claim_is_decided_so_not_passes() -> None:
    result, _ = await run({"not": {"claim": {"name": "groups", "contains": "contractors"}}})
    assert result.ok is True


async def test_claim_needs_no_gerrit_account() -> None:
    result, _ = await run({"claim": {"name": "groups", "contains": "ci"}}, identity=TOKEN_NO_ACCOUNT)
    assert result.ok is True


async def test_trace_shows_type_and_outcome_never_the_value() -> None:
    secret_claims = {**CLAIMS, "scope": "s3cr3t-word other"}
    identity = Identity(Principal("jwt", "alice", claims=secret_claims), ALICE, "gerrit")
    result, trace = await run({"claim": {"name": "scope", "contains": "read"}}, identity=identity)
    assert result.ok is False
    (entry,) = trace
    assert entry.detail == "claim is string of 2 word(s); not matched"
    assert entry.target == "scope contains 'read'"
    assert "s3cr3t" not in repr(entry) + result.reason
    _, trace = await run({"claim": {"name": "groups", "any_of": ["ci"]}})
    assert trace[0].detail == "claim is list of 2 item(s); matched"


@settings(max_examples=200, deadline=None)
@given(
    capture=st.text(min_size=1, max_size=20),
    words=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=12), max_size=6
    ),
)
def test_a_filled_value_matches_only_a_whole_word(capture: str, words: list[str]) -> None:
    claim, _, _ = parse_claim({"name": "scope", "contains": "deploy:{project}"})
    assert claim is not None
    scope = " ".join(words)
    wanted = "deploy:" + capture
    assert claim_matches(claim, scope, filled(claim, {"project": capture})) is (wanted in scope.split(" "))


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_bad_max_token_lifetime_names_the_key(value: Any) -> None:
    data = {
        "gerrit": {"url": "http://g", "username": "bot", "password_env": "X"},
        "identity": [{"jwt": {"issuer": "https://idp", "audiences": ["a"], "max_token_lifetime": value}}],
        "rules": [{"name": "r", "require": "anyone"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "identity[0].jwt.max_token_lifetime" in str(info.value)


@pytest.mark.parametrize("separator", ["\u3000", "\x1f", "\t", "\n", "\u2028"])
def test_scope_words_are_separated_by_spaces_only(separator: str) -> None:
    # OAuth scopes are space-separated (RFC 6749 §3.3); a client-chosen scope holding another whitespace is one word.
    claim, _, _ = parse_claim({"name": "scope", "contains": "admin"})
    assert claim is not None
    assert not claim_matches(claim, f"deploy:x{separator}admin", claim.values)
    assert claim_matches(claim, "openid  admin", claim.values)
