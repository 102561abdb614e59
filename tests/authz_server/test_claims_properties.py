"""Property: ``claim`` leaves keep the three-valued logic sound, over random trees and identities.

Reference (Kleene, as in test_evaluate_properties): a claim leaf is decided (True/False) for an identity with a
verified token, whether or not it has a Gerrit account, and undecided for everybody else: anonymous, a failed
credential, and an identity without a token (Basic). So ``not: {claim: ...}`` never passes for a Basic caller.
"""

from __future__ import annotations

from typing import Any

from _support.factories import FakeFacts, make_input
from _support.kleene import FixedIdentity, assert_matches_reference, kleene, requirement_trees, yaml_of
from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server._accounts import AccountKey
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer
from authz_server._facts import Account, Group
from authz_server._identity import ANONYMOUS, Identity, Principal
from authz_server._policy import Policy, Rule
from authz_server._requirements import parse_requirement
from authz_server.errors import Unauthenticated

ALICE = Account(1000001, "alice", "alice@example.com")
CLAIMS = {"iss": "https://idp.test", "sub": "alice", "scope": "openid read", "groups": ["ci"]}
IDENTITIES = {
    "anonymous": ANONYMOUS,
    "bad-credential": Identity(error=Unauthenticated("invalid_token", "bad signature")),
    "token": Identity(Principal("jwt", "alice", claims=CLAIMS), ALICE, "gerrit"),
    "token-no-account": Identity(
        Principal("jwt", "ghost", account_key=AccountKey("email", "ghost@example.com"), claims=CLAIMS)
    ),
    "basic": Identity(Principal("gerrit_http_credentials", "alice", account=ALICE), ALICE, "gerrit"),
}
LEAVES: dict[str, Any] = {
    "scope-yes": {"claim": {"name": "scope", "contains": "read"}},
    "scope-no": {"claim": {"name": "scope", "contains": "write"}},
    "groups-yes": {"claim": {"name": "groups", "any_of": ["ops", "ci"]}},
    "missing": {"claim": {"name": "realm_access.roles", "contains": "admin"}},
    "member": {"group": "sat"},
    "authenticated": "authenticated",
}
UNDECIDED_FAMILY = {
    "anonymous": "unauthenticated",
    "bad-credential": "unauthenticated",
    "token-no-account": "permission_denied",
    "basic": "permission_denied",
}

trees = requirement_trees(list(LEAVES))


def reference(tree: Any, who: str) -> bool | None:

    def leaf(name: str) -> bool | None:
        if who == "bad-credential":
            return None
        if name == "authenticated":
            return who != "anonymous"
        if name == "member":
            return True if who in ("token", "basic") else None
        if who not in ("token", "token-no-account"):
            return None  # no token: a claim cannot be decided
        return name in ("scope-yes", "groups-yes")

    return kleene(tree, leaf)


FACTS = FakeFacts(groups={ALICE.id: [Group("a" * 40, "sat")]})
INPUT = make_input("GET", "/x")


@settings(max_examples=500, deadline=None)
@given(tree=trees, who=st.sampled_from(sorted(IDENTITIES)))
async def test_claims_never_allow_where_the_reference_does_not(tree: Any, who: str) -> None:
    expected = reference(tree, who)
    policy = Policy([Rule("r", parse_requirement(yaml_of(tree, LEAVES)))])
    authorizer = Authorizer(policy, FixedIdentity(IDENTITIES[who]), FACTS)
    decision = await authorizer.decide(INPUT, Deadline.after(5))
    assert_matches_reference(decision, expected, who, UNDECIDED_FAMILY)


def test_reference_points() -> None:
    assert reference(("not", "scope-yes"), "basic") is None
    assert reference(("not", "missing"), "token") is True
    assert reference(("any", ["scope-no", "member"]), "basic") is True
    assert reference(("not", "member"), "token-no-account") is None
