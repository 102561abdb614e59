"""Authorizer.decide(): rule matching, identity resolution and evaluation, end to end over FakeFacts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from _support.factories import FakeFacts, basic_auth, make_authorizer, make_change, make_input

from authz_server._deadline import Deadline
from authz_server._engine import Decision
from authz_server._facts import Account, Group, LabelVotes
from authz_server._identity import BasicCredentialsSource, EnvoyJwtMetadataSource, IdentitySource
from authz_server.config import EnvoyJwtMetadataConfig
from authz_server.errors import BadRequest, PermissionDenied, Unauthenticated, Unavailable, status_for

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
BOB = Account(1000002, "bob", "bob@example.com", "Bob")
RELEASE_MANAGERS = Group("6a1e70e1a88782771a91808c8af9bbb7a9871389", "release-managers")
ADMINISTRATORS = Group("a0000000000000000000000000000000000000aa", "Administrators")

ALICE_TOKEN = {"authorization": "Test alice@example.com"}
BOB_TOKEN = {"authorization": "Test bob@example.com"}
STRANGER_TOKEN = {"authorization": "Test stranger@example.com"}

OUTAGE = Unavailable("gerrit_unavailable", "Gerrit timed out", transient=True)

# The example configuration's rules (examples/config.yaml), as YAML-shaped mappings.
EXAMPLE_RULES: list[dict[str, Any]] = [
    {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"},
    {
        "name": "read-artifacts",
        "match": {"methods": ["GET", "HEAD"], "path": "/artifacts/{project}/-/{branch}/{file:path}"},
        "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
    },
    {
        "name": "admin-api",
        "match": {"path_prefix": "/admin/"},
        "require": {"any": [{"group": "Administrators"}, {"capability": "administrateServer"}]},
    },
    {
        "name": "deploy",
        "match": {"methods": ["POST"], "path": "/deploy/{change}"},
        "require": {
            "all": [
                {"group": "release-managers"},
                {"change": {"id": "{change}", "status": "MERGED", "labels": {"Code-Review": 2, "Verified": 1}}},
            ]
        },
    },
    {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
]


def org(**overrides: Any) -> FakeFacts:
    kwargs: dict[str, Any] = {
        "accounts": {"alice@example.com": ALICE, "bob@example.com": BOB},
        "credentials": {("alice", "alice-http-pw"): ALICE},
        "groups": {ALICE.id: [RELEASE_MANAGERS], BOB.id: [ADMINISTRATORS]},
        "capabilities": {BOB.id: ["administrateServer"]},
        "access": {("platform/build", ALICE.id, "refs/heads/main", "read"): True},
        "changes": {
            "42": make_change(42, status="MERGED", labels={"Code-Review": LabelVotes(2), "Verified": LabelVotes(1)}),
            "43": make_change(43, status="NEW", labels={"Code-Review": LabelVotes(2), "Verified": LabelVotes(1)}),
        },
    }
    kwargs.update(overrides)
    return FakeFacts(**kwargs)


async def decide(
    rules: Sequence[Mapping[str, Any]],
    facts: FakeFacts,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Decision:
    return await make_authorizer(rules, facts).decide(make_input(method, path, headers, **kwargs), Deadline.after(5))


def http_status(decision: Decision) -> int:
    return status_for(decision.error).http


class TestExamplePolicy:
    async def test_health_is_open_to_anonymous(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/healthz")
        assert decision.allowed
        assert decision.rule == "health"

    async def test_read_artifacts_decodes_the_project(self) -> None:
        facts = org()
        decision = await decide(
            EXAMPLE_RULES, facts, "GET", "/artifacts/platform%2Fbuild/-/main/out/app.tar", ALICE_TOKEN
        )
        assert decision.allowed, decision.reason
        assert decision.rule == "read-artifacts"
        assert decision.identity.account == ALICE
        assert ("check_access", ("platform/build", ALICE.id, "refs/heads/main", "read")) in facts.calls

    async def test_read_artifacts_denied_for_another_account(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/artifacts/platform%2Fbuild/-/main/a", BOB_TOKEN)
        assert isinstance(decision.error, PermissionDenied)
        assert decision.error.code == "requirement_failed"
        assert decision.reason.startswith("rule 'read-artifacts': ")
        assert "'platform/build'" in decision.reason

    async def test_admin_api_by_group_or_capability(self) -> None:
        assert (await decide(EXAMPLE_RULES, org(), "GET", "/admin/caches", BOB_TOKEN)).allowed
        only_capability = org(groups={}, capabilities={BOB.id: ["administrateServer"]})
        assert (await decide(EXAMPLE_RULES, only_capability, "GET", "/admin/caches", BOB_TOKEN)).allowed
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/admin/caches", ALICE_TOKEN)
        assert http_status(decision) == 403

    async def test_deploy_needs_release_manager_and_a_merged_reviewed_change(self) -> None:
        assert (await decide(EXAMPLE_RULES, org(), "POST", "/deploy/42", ALICE_TOKEN)).allowed
        not_merged = await decide(EXAMPLE_RULES, org(), "POST", "/deploy/43", ALICE_TOKEN)
        assert http_status(not_merged) == 403
        assert "status is NEW" in not_merged.reason
        not_a_release_manager = await decide(EXAMPLE_RULES, org(), "POST", "/deploy/42", BOB_TOKEN)
        assert http_status(not_a_release_manager) == 403
        assert "release-managers" in not_a_release_manager.reason

    async def test_get_on_deploy_falls_through_to_signed_in(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/deploy/42", BOB_TOKEN)
        assert (decision.allowed, decision.rule) == (True, "signed-in")


class TestAnonymousAndAccounts:
    async def test_anonymous_on_a_rule_that_needs_a_login_is_401(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/anything")
        assert isinstance(decision.error, Unauthenticated)
        assert decision.error.code == "missing_credentials"
        assert http_status(decision) == 401
        assert decision.rule == "signed-in"

    async def test_anonymous_failing_a_gerrit_requirement_is_401(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "POST", "/deploy/42")
        assert http_status(decision) == 401
        assert decision.error is not None and decision.error.code == "missing_credentials"

    async def test_not_authenticated_allows_anonymous_only(self) -> None:
        rules = [{"name": "login-page", "require": {"not": "authenticated"}}]
        assert (await decide(rules, org(), "GET", "/login")).allowed
        decision = await decide(rules, org(), "GET", "/login", ALICE_TOKEN)
        assert http_status(decision) == 403

    async def test_authenticated_without_a_gerrit_account_is_403_with_that_reason(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "POST", "/deploy/42", STRANGER_TOKEN)
        assert isinstance(decision.error, PermissionDenied)
        assert "no Gerrit account" in decision.reason
        assert decision.identity.authenticated
        assert decision.identity.account is None

    async def test_authenticated_without_a_gerrit_account_passes_authenticated(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/anything", STRANGER_TOKEN)
        assert decision.allowed

    async def test_basic_credentials_verified_by_gerrit(self) -> None:
        facts = org()
        headers = {"authorization": basic_auth("alice", "alice-http-pw")}
        decision = await decide(EXAMPLE_RULES, facts, "POST", "/deploy/42", headers)
        assert decision.allowed
        assert decision.identity.account == ALICE
        assert facts.count("verify_credentials") == 1
        assert facts.count("account") == 0  # Gerrit already said who it is

    async def test_refused_basic_credentials_are_401_invalid_credentials(self) -> None:
        headers = {"authorization": basic_auth("alice", "wrong")}
        decision = await decide(EXAMPLE_RULES, org(), "GET", "/anything", headers)
        assert isinstance(decision.error, Unauthenticated)
        assert decision.error.code == "invalid_credentials"

    @pytest.mark.parametrize(("metadata_first", "account"), [(True, BOB), (False, ALICE)])
    async def test_first_present_identity_source_decides(self, metadata_first: bool, account: Account) -> None:
        facts = org()
        metadata_source = EnvoyJwtMetadataSource(EnvoyJwtMetadataConfig())
        basic_source = BasicCredentialsSource(facts)
        sources: list[IdentitySource] = (
            [metadata_source, basic_source] if metadata_first else [basic_source, metadata_source]
        )
        authorizer = make_authorizer(EXAMPLE_RULES, facts, sources)
        inp = make_input(
            "GET",
            "/x",
            {"authorization": basic_auth("alice", "alice-http-pw")},
            metadata={"envoy.filters.http.jwt_authn": {"jwt_payload": {"sub": "b", "email": "bob@example.com"}}},
        )
        decision = await authorizer.decide(inp, Deadline.after(5))
        assert decision.identity.account == account
        assert facts.count("verify_credentials") == (0 if metadata_first else 1)

    async def test_anyone_rule_does_not_resolve_the_identity(self) -> None:
        facts = org()
        headers = {"authorization": basic_auth("alice", "alice-http-pw")}
        decision = await decide(EXAMPLE_RULES, facts, "GET", "/healthz", headers)
        assert decision.allowed
        assert facts.calls == []
        assert decision.identity.principal is None

    async def test_anyone_rule_allows_a_bad_credential(self) -> None:
        headers = {"authorization": basic_auth("alice", "wrong")}
        assert (await decide(EXAMPLE_RULES, org(), "GET", "/healthz", headers)).allowed


class TestMatching:
    async def test_no_matching_rule_is_403(self) -> None:
        rules = [{"name": "only", "match": {"path": "/only"}, "require": "anyone"}]
        decision = await decide(rules, org(), "GET", "/other")
        assert isinstance(decision.error, PermissionDenied)
        assert decision.error.code == "no_matching_rule"
        assert decision.rule == ""
        assert "GET /other" in decision.reason

    async def test_first_match_wins(self) -> None:
        rules = [
            {"name": "first", "match": {"path_prefix": "/a/"}, "require": {"not": "anyone"}},
            {"name": "second", "match": {"path_prefix": "/a/"}, "require": "anyone"},
        ]
        decision = await decide(rules, org(), "GET", "/a/b")
        assert (decision.allowed, decision.rule) == (False, "first")

    @pytest.mark.parametrize(
        ("method", "path", "rule"),
        [
            ("GET", "/api/x", "read"),
            ("head", "/api/x", "read"),
            ("POST", "/api/x", "write"),
            ("DELETE", "/api/x", "fallback"),
            ("GET", "/api", "fallback"),  # prefix "/api/" does not match "/api"
            ("GET", "/apix", "fallback"),
        ],
    )
    async def test_method_and_path_prefix(self, method: str, path: str, rule: str) -> None:
        rules: list[dict[str, Any]] = [
            {"name": "read", "match": {"methods": ["get", "HEAD"], "path_prefix": "/api/"}, "require": "anyone"},
            {"name": "write", "match": {"methods": ["POST"], "path_prefix": "/api/"}, "require": "anyone"},
            {"name": "fallback", "require": "anyone"},
        ]
        assert (await decide(rules, org(), method, path)).rule == rule

    @pytest.mark.parametrize(
        ("host", "rule"),
        [
            ("artifacts.example.com", "artifacts-host"),
            ("Artifacts.Example.com:8443", "artifacts-host"),
            ("other.example.com", "fallback"),
        ],
    )
    async def test_hosts(self, host: str, rule: str) -> None:
        rules: list[dict[str, Any]] = [
            {"name": "artifacts-host", "match": {"hosts": ["artifacts.example.com"]}, "require": "anyone"},
            {"name": "fallback", "require": "anyone"},
        ]
        assert (await decide(rules, org(), "GET", "/", host=host)).rule == rule

    @pytest.mark.parametrize(
        ("extensions", "rule"),
        [
            ({"tier": "prod", "vhost": "artifacts"}, "prod"),
            ({"tier": "prod"}, "prod"),
            ({"tier": "dev"}, "fallback"),
            ({}, "fallback"),
        ],
    )
    async def test_context_extensions(self, extensions: dict[str, str], rule: str) -> None:
        rules: list[dict[str, Any]] = [
            {"name": "prod", "match": {"context_extensions": {"tier": "prod"}}, "require": "anyone"},
            {"name": "fallback", "require": "anyone"},
        ]
        assert (await decide(rules, org(), "GET", "/", context_extensions=extensions)).rule == rule

    def test_capture_that_is_not_utf8_is_400(self) -> None:
        # Every escape but %2F is decoded before matching, so bad UTF-8 is refused before any rule is tried.
        with pytest.raises(BadRequest) as info:
            make_input("GET", "/p/%FF")
        assert info.value.code == "malformed_path"
        assert status_for(info.value).http == 400


class TestErrors:
    async def test_gerrit_outage_is_503_naming_rule_and_requirement(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(errors={"groups": OUTAGE}), "POST", "/deploy/42", ALICE_TOKEN)
        assert isinstance(decision.error, Unavailable)
        assert http_status(decision) == 503
        assert decision.error.code == "gerrit_unavailable"
        assert decision.reason.startswith("rule 'deploy': group 'release-managers'")

    async def test_outage_inside_all_with_another_unmet_requirement_is_403(self) -> None:
        # alice is no administrator: that decides the all, whatever the change lookup would have said
        rules = [{"name": "r", "require": {"all": [{"group": "Administrators"}, {"change": {"id": "42"}}]}}]
        decision = await decide(rules, org(errors={"change": OUTAGE}), "GET", "/", ALICE_TOKEN)
        assert http_status(decision) == 403

    async def test_outage_inside_all_otherwise_is_503(self) -> None:
        rules = [{"name": "r", "require": {"all": [{"group": "release-managers"}, {"change": {"id": "42"}}]}}]
        decision = await decide(rules, org(errors={"change": OUTAGE}), "GET", "/", ALICE_TOKEN)
        assert http_status(decision) == 503

    async def test_outage_inside_any_with_another_satisfied_requirement_allows(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(errors={"groups": OUTAGE}), "GET", "/admin/x", BOB_TOKEN)
        assert decision.allowed

    async def test_outage_inside_any_with_nothing_satisfied_is_503(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(errors={"groups": OUTAGE}), "GET", "/admin/x", ALICE_TOKEN)
        assert http_status(decision) == 503

    async def test_outage_during_account_lookup_is_503(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(errors={"account": OUTAGE}), "GET", "/x", ALICE_TOKEN)
        assert http_status(decision) == 503

    async def test_outage_while_verifying_credentials_is_503(self) -> None:
        headers = {"authorization": basic_auth("alice", "alice-http-pw")}
        decision = await decide(EXAMPLE_RULES, org(errors={"verify_credentials": OUTAGE}), "GET", "/x", headers)
        assert http_status(decision) == 503


class TestDecision:
    async def test_decision_ids_are_unique_or_given(self) -> None:
        authorizer = make_authorizer(EXAMPLE_RULES, org())
        inp = make_input("GET", "/healthz")
        a = await authorizer.decide(inp, Deadline.after(5))
        b = await authorizer.decide(inp, Deadline.after(5))
        assert a.decision_id and b.decision_id and a.decision_id != b.decision_id
        assert (await authorizer.decide(inp, Deadline.after(5), "fixed-id")).decision_id == "fixed-id"

    async def test_trace_of_the_matched_rule(self) -> None:
        decision = await decide(EXAMPLE_RULES, org(), "POST", "/deploy/42", ALICE_TOKEN)
        assert [(t.kind, t.target, t.depth, t.result) for t in decision.trace] == [
            ("all", "", 0, "satisfied"),
            ("group", "release-managers", 1, "satisfied"),
            ("change", "42", 1, "satisfied"),
        ]


class TestConcurrency:
    async def test_independent_requirements_are_looked_up_at_once(self) -> None:
        facts = org()
        both_in_flight = asyncio.Barrier(2)

        async def hook(method: str, args: tuple[Any, ...]) -> None:
            if method in ("groups", "change"):
                # Returns only once the other lookup is waiting too: sequential lookups would time out here.
                await asyncio.wait_for(both_in_flight.wait(), timeout=2)

        facts.hook = hook
        decision = await decide(EXAMPLE_RULES, facts, "POST", "/deploy/42", ALICE_TOKEN)
        assert decision.allowed, decision.reason
        assert facts.max_in_flight == 2
        assert {name for name, _ in facts.calls} == {"account", "groups", "change"}
