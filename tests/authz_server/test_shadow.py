"""Shadow mode in the decision pipeline and the CheckResponse: what is let through, what stays enforced."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from _support.factories import FakeFacts, basic_auth, make_input, make_rules

from authz_server._audit import audit_line
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer, Decision
from authz_server._facts import Account, Group
from authz_server._identity import BasicCredentialsSource, IdentityResolver
from authz_server._response import to_check_response
from authz_server.errors import Unavailable

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
AS_ALICE = {"authorization": basic_auth("alice", "pw")}
ADMINS = {"group": "Administrators"}


def facts(**kw: Any) -> FakeFacts:
    return FakeFacts(credentials={("alice", "pw"): ALICE}, groups={ALICE.id: [Group("a" * 40, "Users")]}, **kw)


async def decide(
    rules: Sequence[Mapping[str, Any]],
    path: str = "/x",
    headers: Mapping[str, str] | None = None,
    *,
    shadow: bool = False,
    gerrit: FakeFacts | None = None,
) -> Decision:
    f = gerrit or facts()
    authorizer = Authorizer(make_rules(rules), IdentityResolver([BasicCredentialsSource(f)], f), f, shadow=shadow)
    return await authorizer.decide(make_input("GET", path, headers), Deadline.after(5))


def upstream_headers(decision: Decision) -> dict[str, str]:
    response = to_check_response(decision, make_input("GET", "/x"))
    assert response.status.code == 0
    return {h.header.key: h.header.value for h in response.ok_response.headers}


async def test_shadow_rule_lets_a_403_through_with_the_code_it_would_have_returned() -> None:
    decision = await decide([{"name": "trial", "mode": "shadow", "require": ADMINS}], headers=AS_ALICE)
    assert decision.allowed and decision.shadow
    assert decision.error is not None and decision.error.code == "requirement_failed"
    headers = upstream_headers(decision)
    assert headers["x-authz-shadow"] == "requirement_failed"
    assert headers["x-gerrit-username"] == "alice"
    line = audit_line(decision, None, elapsed_ms=1, via="check")
    assert '"shadow":true' in line and '"http_status":403' in line and '"allowed":true' in line


async def test_enforced_rule_beside_a_shadow_rule_still_denies() -> None:
    rules = [
        {"name": "trial", "mode": "shadow", "match": {"path_prefix": "/trial/"}, "require": ADMINS},
        {"name": "admin", "match": {"path_prefix": "/admin/"}, "require": ADMINS},
    ]
    assert (await decide(rules, "/trial/a", AS_ALICE)).allowed
    enforced = await decide(rules, "/admin/a", AS_ALICE)
    assert not enforced.allowed and not enforced.shadow
    assert to_check_response(enforced, None).denied_response.status.code == 403


async def test_anonymous_401_and_a_bad_credential_are_shadowed_too() -> None:
    rules = [{"name": "trial", "mode": "shadow", "require": "authenticated"}]
    anonymous = await decide(rules)
    assert anonymous.allowed and anonymous.error is not None and anonymous.error.code == "missing_credentials"
    wrong = await decide(rules, headers={"authorization": basic_auth("alice", "nope")})
    assert wrong.allowed and wrong.shadow and upstream_headers(wrong)["x-authz-shadow"] == wrong.error.code  # type: ignore[union-attr]


async def test_a_shadowed_allow_has_no_shadow_header_but_is_counted_as_shadow() -> None:
    decision = await decide([{"name": "trial", "mode": "shadow", "require": "authenticated"}], headers=AS_ALICE)
    assert decision.allowed and decision.shadow and decision.error is None
    assert "x-authz-shadow" not in upstream_headers(decision)


async def test_global_shadow_covers_no_matching_rule() -> None:
    decision = await decide([{"name": "other", "match": {"path": "/other"}, "require": "anyone"}], shadow=True)
    assert decision.allowed and decision.error is not None and decision.error.code == "no_matching_rule"


@pytest.mark.parametrize("shadow_globally", [True, False])
async def test_an_outage_is_never_turned_into_an_allow_by_shadow_mode(shadow_globally: bool) -> None:
    down = facts(errors={"groups": Unavailable("gerrit_unavailable", "Gerrit unreachable", transient=True)})
    rule = {"name": "trial", "require": ADMINS, **({} if shadow_globally else {"mode": "shadow"})}
    decision = await decide([rule], headers=AS_ALICE, shadow=shadow_globally, gerrit=down)
    assert not decision.allowed and not decision.shadow
    assert to_check_response(decision, None).error_response.status.code == 503


async def test_a_malformed_request_stays_400_in_global_shadow() -> None:
    # A %2F that changes the rule is refused by the policy, inside the decision: shadow must not let it through.
    rules = [
        {"name": "admin", "match": {"path": "/admin/{x}"}, "require": "anyone"},
        {"name": "rest", "match": {"path_prefix": "/"}, "require": "anyone"},
    ]
    decision = await decide(rules, "/admin%2Fx", shadow=True)
    assert decision.error is not None and decision.error.code == "ambiguous_path"
    assert not decision.allowed
    assert to_check_response(decision, None).denied_response.status.code == 400
