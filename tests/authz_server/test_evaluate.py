"""evaluate(): every requirement kind against FakeFacts, three-valued all/any/not, and the trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from _support.factories import FakeFacts, make_change

from authz_server._accounts import AccountKey
from authz_server._deadline import Deadline
from authz_server._evaluate import Context, Result, TraceEntry, evaluate
from authz_server._facts import AccessResult, Account, Group, LabelVotes
from authz_server._identity import ANONYMOUS, Identity, Principal
from authz_server._requirements import parse_requirement
from authz_server.errors import AuthzError, PermissionDenied, Unauthenticated, Unavailable

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
ALICE_ID = Identity(Principal("test_token", "alice", account=ALICE), ALICE, "gerrit")
NO_ACCOUNT = Identity(
    Principal("test_token", "nobody@example.com", account_key=AccountKey("email", "nobody@example.com"))
)
BAD_TOKEN = Identity(error=Unauthenticated("invalid_token", "bad signature"))

RELEASE_MANAGERS = Group("6a1e70e1a88782771a91808c8af9bbb7a9871389", "release-managers")
ADMINISTRATORS = Group("a0000000000000000000000000000000000000aa", "Administrators")

OUTAGE = Unavailable("gerrit_unavailable", "Gerrit timed out", detail="ReadTimeout after 2.0s", transient=True)


def facts_for_alice(**overrides: Any) -> FakeFacts:
    kwargs: dict[str, Any] = {
        "groups": {ALICE.id: [RELEASE_MANAGERS]},
        "capabilities": {ALICE.id: ["accessDatabase"]},
        "access": {
            ("platform/build", ALICE.id, "refs/heads/main", "read"): True,
            ("platform/build", ALICE.id, "refs/heads/main", "push"): AccessResult(False, "alice cannot push"),
        },
    }
    kwargs.update(overrides)
    return FakeFacts(**kwargs)


async def run(
    require: Any,
    facts: FakeFacts | None = None,
    identity: Identity = ALICE_ID,
    captures: Mapping[str, str] | None = None,
) -> tuple[Result, list[TraceEntry]]:
    ctx = Context(identity, dict(captures or {}), facts or facts_for_alice(), Deadline.after(5))
    return await evaluate(parse_requirement(require), ctx)


# Leaves of known outcome for the combinators: group is satisfied, capability is not, change errors.
SAT = {"group": "release-managers"}
UNSAT = {"capability": "administrateServer"}
ERR = {"change": {"id": "42"}}


def combinator_facts() -> FakeFacts:
    return facts_for_alice(errors={"change": OUTAGE})


class TestLeaves:
    async def test_anyone_is_satisfied_without_any_lookup(self) -> None:
        facts = facts_for_alice()
        result, trace = await run("anyone", facts, ANONYMOUS)
        assert result.ok is True
        assert facts.calls == []
        assert trace == [TraceEntry("anyone", "", "satisfied")]

    async def test_anyone_is_satisfied_even_with_a_bad_credential(self) -> None:
        result, _ = await run("anyone", identity=BAD_TOKEN)
        assert result.ok is True

    async def test_authenticated(self) -> None:
        assert (await run("authenticated"))[0].ok is True
        assert (await run("authenticated", identity=NO_ACCOUNT))[0].ok is True

    async def test_authenticated_unsatisfied_for_anonymous(self) -> None:
        result, _ = await run("authenticated", identity=ANONYMOUS)
        assert result.ok is False
        assert "no credential" in result.reason

    @pytest.mark.parametrize("group", ["release-managers", RELEASE_MANAGERS.id])
    async def test_group_by_name_or_uuid(self, group: str) -> None:
        facts = facts_for_alice()
        result, trace = await run({"group": group}, facts)
        assert result.ok is True
        assert facts.calls == [("groups", (ALICE.id,))]
        assert (trace[0].kind, trace[0].target, trace[0].result) == ("group", group, "satisfied")

    async def test_group_not_a_member(self) -> None:
        result, _ = await run({"group": "Administrators"})
        assert result.ok is False
        assert "group 'Administrators'" in result.reason
        assert "alice is not a member" in result.reason

    async def test_group_name_is_not_a_substring_match(self) -> None:
        assert (await run({"group": "release"}))[0].ok is False

    async def test_group_from_capture(self) -> None:
        result, _ = await run({"group": "{team}"}, captures={"team": "release-managers"})
        assert result.ok is True

    async def test_permission_with_captures(self) -> None:
        facts = facts_for_alice()
        require = {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}}
        result, trace = await run(require, facts, captures={"project": "platform/build", "branch": "main"})
        assert result.ok is True
        assert facts.calls == [("check_access", ("platform/build", ALICE.id, "refs/heads/main", "read"))]
        assert trace[0].target == "platform/build refs/heads/main read"

    async def test_permission_denied_names_project_ref_and_perm(self) -> None:
        require = {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "push"}}
        result, trace = await run(require, captures={"project": "platform/build", "branch": "main"})
        assert result.ok is False
        assert "'push'" in result.reason
        assert "'platform/build'" in result.reason
        assert "'refs/heads/main'" in result.reason
        assert trace[0].detail == "alice cannot push"  # Gerrit's own message reaches the trace

    async def test_permission_unknown_is_denied(self) -> None:
        require = {"permission": {"project": "other", "ref": "refs/heads/main", "perm": "read"}}
        assert (await run(require))[0].ok is False

    async def test_capability(self) -> None:
        assert (await run({"capability": "accessDatabase"}))[0].ok is True
        result, _ = await run({"capability": "administrateServer"})
        assert result.ok is False
        assert "administrateServer" in result.reason and "lacks the capability" in result.reason

    async def test_source_of_the_fact_reaches_the_trace(self) -> None:
        _, trace = await run({"group": "release-managers"}, facts_for_alice(source="stale_cache"))
        assert trace[0].source == "stale_cache"


class TestChange:
    MERGED_GOOD = make_change(
        42,
        status="MERGED",
        labels={"Code-Review": LabelVotes(max=2), "Verified": LabelVotes(max=1)},
        submittable=False,
    )
    REQUIRE: ClassVar[dict[str, Any]] = {
        "change": {"id": "{change}", "status": "MERGED", "labels": {"Code-Review": 2, "Verified": 1}}
    }

    async def test_satisfied_with_id_from_capture(self) -> None:
        facts = facts_for_alice(changes={"42": self.MERGED_GOOD})
        result, trace = await run(self.REQUIRE, facts, captures={"change": "42"})
        assert result.ok is True
        assert facts.calls == [("change", ("42",))]
        assert (trace[0].kind, trace[0].target) == ("change", "42")

    async def test_wrong_status(self) -> None:
        change = make_change(42, status="NEW", labels={"Code-Review": LabelVotes(max=2), "Verified": LabelVotes(1)})
        result, _ = await run(self.REQUIRE, facts_for_alice(changes={"42": change}), captures={"change": "42"})
        assert result.ok is False
        assert "status is NEW, needs MERGED" in result.reason

    async def test_label_below_minimum_and_missing_label(self) -> None:
        change = make_change(42, status="MERGED", labels={"Code-Review": LabelVotes(max=1)})
        result, _ = await run(self.REQUIRE, facts_for_alice(changes={"42": change}), captures={"change": "42"})
        assert result.ok is False
        assert "Code-Review needs +2, has best vote +1" in result.reason
        assert "Verified needs +1, has no votes" in result.reason

    async def test_blocking_vote_fails_even_with_the_maximum(self) -> None:
        change = make_change(
            42,
            status="MERGED",
            labels={"Code-Review": LabelVotes(max=2, min=-2, blocking=True), "Verified": LabelVotes(max=1)},
        )
        result, _ = await run(self.REQUIRE, facts_for_alice(changes={"42": change}), captures={"change": "42"})
        assert result.ok is False
        assert "blocked" in result.reason

    @pytest.mark.parametrize(("have", "want", "ok"), [(True, True, True), (False, True, False), (None, False, False)])
    async def test_submittable(self, have: bool | None, want: bool, ok: bool) -> None:
        facts = facts_for_alice(changes={"7": make_change(7, submittable=have)})
        result, _ = await run({"change": {"id": "7", "submittable": want}}, facts)
        assert result.ok is ok
        if not ok:
            assert "submittable" in result.reason

    async def test_no_such_change(self) -> None:
        result, _ = await run({"change": {"id": "404"}})
        assert result.ok is False
        assert "no such change" in result.reason


class TestIdentityStates:
    @pytest.mark.parametrize(
        "require",
        ["authenticated", {"group": "g"}, {"capability": "c"}, {"change": {"id": "1"}}],
    )
    async def test_bad_credential_is_an_error_not_a_deny(self, require: Any) -> None:
        facts = facts_for_alice()
        result, trace = await run(require, facts, BAD_TOKEN)
        assert result.ok is None
        assert isinstance(result.error, Unauthenticated)
        assert trace[0].result == "undecided"
        assert facts.calls == []

    @pytest.mark.parametrize("require", [{"group": "g"}, {"capability": "c"}, {"change": {"id": "1"}}])
    async def test_anonymous_is_undecided_at_gerrit_requirements_and_login_helps(self, require: Any) -> None:
        facts = facts_for_alice()
        for tree in (require, {"not": require}, {"any": [{"not": require}, UNSAT]}):
            result, _ = await run(tree, facts, ANONYMOUS)
            assert result.ok is None, tree
            assert isinstance(result.error, Unauthenticated) and result.error.code == "missing_credentials"
        assert facts.calls == []

    async def test_anonymous_is_plainly_not_authenticated(self) -> None:
        result, _ = await run({"not": "authenticated"}, identity=ANONYMOUS)
        assert result.ok is True
        result, _ = await run("authenticated", identity=ANONYMOUS)
        assert result.ok is False

    @pytest.mark.parametrize(
        "require",
        [
            {"group": "release-managers"},
            {"capability": "accessDatabase"},
            {"permission": {"project": "platform/build", "ref": "refs/heads/main", "perm": "read"}},
            {"change": {"id": "1"}},
        ],
    )
    async def test_no_gerrit_account_is_undecided_at_every_gerrit_requirement(self, require: Any) -> None:
        facts = facts_for_alice()
        for tree in (require, {"not": require}, {"any": [{"not": require}, UNSAT]}):
            result, _ = await run(tree, facts, NO_ACCOUNT)
            assert result.ok is None, tree
            assert isinstance(result.error, PermissionDenied) and result.error.code == "requirement_failed"
            assert "nobody@example.com has no Gerrit account" in result.reason
        assert facts.calls == []

    async def test_gerrit_outage_is_an_error_naming_the_requirement(self) -> None:
        result, trace = await run({"group": "release-managers"}, facts_for_alice(errors={"groups": OUTAGE}))
        assert result.ok is None
        assert result.error is OUTAGE
        assert "group 'release-managers'" in result.reason and "Gerrit timed out" in result.reason
        assert (trace[0].result, trace[0].detail) == ("undecided", "ReadTimeout after 2.0s")


class TestCombinators:
    @pytest.mark.parametrize(
        ("require", "ok"),
        [
            ({"all": [SAT, SAT]}, True),
            ({"all": [SAT, UNSAT]}, False),
            ({"all": [UNSAT, ERR]}, False),  # one unsatisfied decides: deny, not error
            ({"all": [ERR, UNSAT]}, False),
            ({"all": [SAT, ERR]}, None),  # otherwise the error wins
            ({"all": [SAT]}, True),
            ({"any": [UNSAT, SAT]}, True),
            ({"any": [ERR, SAT]}, True),  # one satisfied decides: allow despite the outage
            ({"any": [SAT, ERR]}, True),
            ({"any": [ERR, UNSAT]}, None),  # none satisfied and one error: error, never a plain deny
            ({"any": [UNSAT, UNSAT]}, False),
            ({"not": SAT}, False),
            ({"not": UNSAT}, True),
            ({"not": ERR}, None),  # not of an error stays an error
            ({"not": {"not": ERR}}, None),
            ({"not": {"any": [ERR, UNSAT]}}, None),
            ({"all": [SAT, {"any": [ERR, SAT]}]}, True),
            ({"all": [{"not": UNSAT}, {"any": [UNSAT, {"not": ERR}]}]}, None),
        ],
    )
    async def test_three_valued(self, require: Any, ok: bool | None) -> None:
        result, _ = await run(require, combinator_facts())
        assert result.ok is ok
        if ok is None:
            assert isinstance(result.error, Unavailable)
        else:
            assert result.error is None

    async def test_all_reports_the_first_unmet_requirement(self) -> None:
        result, _ = await run({"all": [SAT, UNSAT, {"group": "Administrators"}]})
        assert "capability 'administrateServer'" in result.reason
        assert "Administrators" not in result.reason

    async def test_any_reports_every_unmet_requirement(self) -> None:
        result, _ = await run({"any": [UNSAT, {"group": "Administrators"}]})
        assert result.reason.startswith("none of: ")
        assert "administrateServer" in result.reason and "Administrators" in result.reason

    async def test_not_authenticated_is_satisfied_by_anonymous(self) -> None:
        result, _ = await run({"not": "authenticated"}, identity=ANONYMOUS)
        assert result.ok is True

    async def test_not_authenticated_with_a_bad_credential_is_an_error(self) -> None:
        result, _ = await run({"not": "authenticated"}, identity=BAD_TOKEN)
        assert result.ok is None

    async def test_not_satisfied_has_a_reason(self) -> None:
        result, _ = await run({"not": SAT})
        assert result.ok is False and result.reason

    async def test_any_of_anonymous_failures_still_says_login_helps(self) -> None:
        result, _ = await run({"any": [SAT, UNSAT]}, identity=ANONYMOUS)
        assert result.ok is None
        assert isinstance(result.error, Unauthenticated)

    async def test_any_without_a_satisfied_child_returns_the_original_error(self) -> None:
        error: AuthzError = Unavailable("gerrit_timeout", "slow", transient=True)
        result, _ = await run({"any": [UNSAT, {"group": "x"}]}, facts_for_alice(errors={"groups": error}))
        assert result.error is error


class TestTrace:
    async def test_order_and_depth(self) -> None:
        require = {
            "all": [
                {"group": "release-managers"},
                {"any": [{"capability": "administrateServer"}, {"not": "authenticated"}]},
            ]
        }
        result, trace = await run(require)
        assert result.ok is False
        assert [(t.kind, t.depth, t.result) for t in trace] == [
            ("all", 0, "unsatisfied"),
            ("group", 1, "satisfied"),
            ("any", 1, "unsatisfied"),
            ("capability", 2, "unsatisfied"),
            ("not", 2, "unsatisfied"),
            ("authenticated", 3, "satisfied"),
        ]
        assert trace[0].detail == result.reason
        assert trace[1].source == "gerrit"

    async def test_error_entries(self) -> None:
        _, trace = await run({"any": [ERR, UNSAT]}, combinator_facts())
        assert [(t.kind, t.result) for t in trace] == [
            ("any", "undecided"),
            ("change", "undecided"),
            ("capability", "unsatisfied"),
        ]
