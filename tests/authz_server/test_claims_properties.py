"""Property: ``claim`` leaves keep the three-valued logic sound, over random trees and identities.

Reference (Kleene, as in test_evaluate_properties): a claim leaf is decided (True/False) for an identity with a
verified token, whether or not it has a Gerrit account, and undecided for everybody else: anonymous, a failed
credential, and an identity without a token (Basic). So ``not: {claim: ...}`` never passes for a Basic caller.
"""

from __future__ import annotations

from typing import Any

from _support.factories import FakeFacts, make_input
from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server._accounts import AccountKey
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer
from authz_server._facts import Account, Group
from authz_server._identity import ANONYMOUS, Identity, IdentityResolver, Principal
from authz_server._input import CheckInput
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

trees = st.recursive(
    st.sampled_from(sorted(LEAVES)),
    lambda children: st.one_of(
        st.tuples(st.just("not"), children),
        st.tuples(st.sampled_from(["all", "any"]), st.lists(children, min_size=1, max_size=3)),
    ),
    max_leaves=10,
)


def yaml_of(tree: Any) -> Any:
    if isinstance(tree, str):
        return LEAVES[tree]
    op, arg = tree
    return {"not": yaml_of(arg)} if op == "not" else {op: [yaml_of(c) for c in arg]}


def reference(tree: Any, who: str) -> bool | None:
    if isinstance(tree, str):
        if who == "bad-credential":
            return None
        if tree == "authenticated":
            return who != "anonymous"
        if tree == "member":
            return True if who in ("token", "basic") else None
        if who not in ("token", "token-no-account"):
            return None  # no token: a claim cannot be decided
        return tree in ("scope-yes", "groups-yes")
    op, arg = tree
    if op == "not":
        inner = reference(arg, who)
        return None if inner is None else not inner
    rank = {False: 0, None: 1, True: 2}
    return (max if op == "any" else min)([reference(c, who) for c in arg], key=rank.__getitem__)


class _Fixed(IdentityResolver):
    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    async def resolve(self, inp: CheckInput, deadline: Deadline) -> Identity:
        return self._identity


FACTS = FakeFacts(groups={ALICE.id: [Group("a" * 40, "sat")]})
INPUT = make_input("GET", "/x")


@settings(max_examples=500, deadline=None)
@given(tree=trees, who=st.sampled_from(sorted(IDENTITIES)))
async def test_claims_never_allow_where_the_reference_does_not(tree: Any, who: str) -> None:
    expected = reference(tree, who)
    authorizer = Authorizer(Policy([Rule("r", parse_requirement(yaml_of(tree)))]), _Fixed(IDENTITIES[who]), FACTS)
    decision = await authorizer.decide(INPUT, Deadline.after(5))
    assert decision.allowed is (expected is True), (tree, who, decision.error)
    if expected is None:
        assert decision.error is not None and decision.error.family == UNDECIDED_FAMILY[who], (tree, who)
    elif expected is False:
        want = "unauthenticated" if who == "anonymous" else "permission_denied"
        assert decision.error is not None and decision.error.family == want, (tree, who, decision.error)


def test_reference_points() -> None:
    assert reference(("not", "scope-yes"), "basic") is None
    assert reference(("not", "missing"), "token") is True
    assert reference(("any", ["scope-no", "member"]), "basic") is True
    assert reference(("not", "member"), "token-no-account") is None
