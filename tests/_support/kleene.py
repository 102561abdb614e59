"""The three-valued reference for the requirement property tests: random requirement trees, their YAML, Kleene's
logic over leaves that are True (satisfied), False (unsatisfied) or None (undecided), and the decision it implies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

from authz_server._deadline import Deadline
from authz_server._engine import Decision
from authz_server._identity import Identity, IdentityResolver
from authz_server._input import CheckInput

__all__ = ["FixedIdentity", "assert_matches_reference", "kleene", "requirement_trees", "yaml_of"]

Tree = Any  # a leaf name, ("not", Tree) or ("all" | "any", [Tree, ...])
_RANK = {False: 0, None: 1, True: 2}


def requirement_trees(leaves: Sequence[str], *, max_leaves: int = 10) -> st.SearchStrategy[Tree]:
    return st.recursive(
        st.sampled_from(sorted(leaves)),
        lambda children: st.one_of(
            st.tuples(st.just("not"), children),
            st.tuples(st.sampled_from(["all", "any"]), st.lists(children, min_size=1, max_size=3)),
        ),
        max_leaves=max_leaves,
    )


def yaml_of(tree: Tree, leaves: Mapping[str, Any]) -> Any:
    """The policy YAML of ``tree``, each leaf name replaced by its requirement."""
    if isinstance(tree, str):
        return leaves[tree]
    op, arg = tree
    return {"not": yaml_of(arg, leaves)} if op == "not" else {op: [yaml_of(c, leaves) for c in arg]}


def kleene(tree: Tree, leaf: Callable[[str], bool | None]) -> bool | None:
    """Kleene's strong three-valued logic: ``not`` keeps None; ``all`` is the minimum and ``any`` the maximum
    in the order False < None < True."""
    if isinstance(tree, str):
        return leaf(tree)
    op, arg = tree
    if op == "not":
        inner = kleene(arg, leaf)
        return None if inner is None else not inner
    return (max if op == "any" else min)([kleene(child, leaf) for child in arg], key=_RANK.__getitem__)


def assert_matches_reference(
    decision: Decision, expected: bool | None, who: str, undecided_family: Mapping[str, str]
) -> None:
    """Allowed exactly when the reference says True; an undecided tree answers ``undecided_family[who]``; a definite
    no is 401 for the anonymous caller and 403 for everyone else (the contract's table)."""
    assert decision.allowed is (expected is True), (who, decision.error)
    if expected is None:
        assert decision.error is not None and decision.error.family == undecided_family[who], (who, decision.error)
    elif expected is False:
        want = "unauthenticated" if who == "anonymous" else "permission_denied"
        assert decision.error is not None and decision.error.family == want, (who, decision.error)


class FixedIdentity(IdentityResolver):
    """The identity under test, whatever the request says."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    async def resolve(self, inp: CheckInput, deadline: Deadline) -> Identity:
        return self._identity
