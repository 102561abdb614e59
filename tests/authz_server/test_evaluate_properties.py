"""Property: over random requirement trees, gerrit-authz never allows where a small reference evaluator does not.

The reference is Kleene's three-valued logic written as plainly as possible: a leaf is True, False or None
(undecided); ``not`` maps None to None; ``any``/``all`` are max/min over False < None < True. Leaves:
``group: sat`` (alice is a member), ``group: other`` (she is not), ``capability: down`` (Gerrit is unavailable for
that lookup) and ``authenticated``. Identities: anonymous, authenticated without a Gerrit account, alice, and a
credential that failed verification. For anybody but alice every Gerrit leaf is undecided; ``authenticated`` is
False for an anonymous caller and undecided for a failed credential.

The whole pipeline decides (``Authorizer.decide``), so the status table is checked too: an undecided tree is a
401 for an anonymous caller or a bad credential, a 403 for one without an account, a 503 for an outage.
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
from authz_server.errors import Unauthenticated, Unavailable

ALICE = Account(1000001, "alice", "alice@example.com")
IDENTITIES = {
    "anonymous": ANONYMOUS,
    "no-account": Identity(Principal("jwt", "ghost", account_key=AccountKey("email", "ghost@example.com"))),
    "alice": Identity(Principal("jwt", "alice", account=ALICE), ALICE, "gerrit"),
    "bad-credential": Identity(error=Unauthenticated("invalid_token", "bad signature")),
}
LEAVES: dict[str, Any] = {
    "sat": {"group": "sat"},
    "unsat": {"group": "other"},
    "down": {"capability": "down"},
    "authenticated": "authenticated",
}
# What the status of an undecided tree is, by identity (the contract's table).
UNDECIDED_FAMILY = {
    "anonymous": "unauthenticated",
    "bad-credential": "unauthenticated",
    "no-account": "permission_denied",
    "alice": "unavailable",
}

trees = requirement_trees(list(LEAVES))


def reference(tree: Any, who: str) -> bool | None:
    """The three-valued truth of ``tree`` for identity ``who``."""

    def leaf(name: str) -> bool | None:
        if who == "bad-credential":
            return None
        if name == "authenticated":
            return who != "anonymous"
        if who != "alice":
            return None  # nobody to ask Gerrit about, or no account to ask for
        return {"sat": True, "unsat": False, "down": None}[name]

    return kleene(tree, leaf)


FACTS = FakeFacts(
    groups={ALICE.id: [Group("a" * 40, "sat"), Group("b" * 40, "unrelated")]},
    errors={"capabilities": Unavailable("gerrit_timeout", "Gerrit did not answer", transient=True)},
)
INPUT = make_input("GET", "/x")


@settings(max_examples=600, deadline=None)
@given(tree=trees, who=st.sampled_from(sorted(IDENTITIES)))
async def test_never_allows_where_the_reference_does_not(tree: Any, who: str) -> None:
    expected = reference(tree, who)
    policy = Policy([Rule("r", parse_requirement(yaml_of(tree, LEAVES)))])
    authorizer = Authorizer(policy, FixedIdentity(IDENTITIES[who]), FACTS)

    decision = await authorizer.decide(INPUT, Deadline.after(5))

    assert_matches_reference(decision, expected, who, UNDECIDED_FAMILY)


def test_the_reference_itself_is_kleene() -> None:
    # A few hand-checked points, so the property cannot pass against a broken reference.
    assert reference(("not", "down"), "alice") is None
    assert reference(("any", ["down", "sat"]), "alice") is True
    assert reference(("all", ["down", "unsat"]), "alice") is False
    assert reference(("not", "sat"), "no-account") is None
    assert reference(("not", "authenticated"), "anonymous") is True
    assert reference(("any", [("not", "sat"), "unsat"]), "anonymous") is None
