"""The event → invalidation mapping, over real `gerrit stream-events` lines (scripts/record_gerrit_events.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_server._event_map import Invalidation, MalformedEvent, event_type, invalidations, parse_line

RECORDED = Path(__file__).resolve().parents[1] / "data" / "gerrit_events.jsonl"


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    lines = RECORDED.read_text().splitlines()
    assert len(lines) >= 20, "record them with scripts/record_gerrit_events.py"
    return [parse_line(line) for line in lines]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    found = [e for e in events if event_type(e) == kind]
    assert found, f"no {kind} in {RECORDED.name}"
    return found


def test_access_change_drops_the_project(events: list[dict[str, Any]]) -> None:
    config = [e for e in of_type(events, "ref-updated") if e["refUpdate"]["refName"] == "refs/meta/config"]
    projects = {e["refUpdate"]["project"] for e in config}
    assert {"platform/build", "All-Projects"} <= projects
    for event in config:
        assert invalidations(event) == [Invalidation("project", event["refUpdate"]["project"])]


def test_group_change_drops_memberships_and_access(events: list[dict[str, Any]]) -> None:
    groups = [e for e in of_type(events, "ref-updated") if e["refUpdate"]["refName"].startswith("refs/groups/")]
    assert len(groups) == 2  # carol added, then removed
    for event in groups:
        assert event["refUpdate"]["project"] == "All-Users"
        kinds = [i.kind for i in invalidations(event)]
        assert kinds == ["group", "project"]
        assert invalidations(event)[1].key == "All-Projects"


@pytest.mark.parametrize(
    "kind",
    [
        "patchset-created",
        "comment-added",
        "vote-deleted",
        "wip-state-changed",
        "private-state-changed",
        "topic-changed",
        "change-abandoned",
        "change-restored",
        "change-merged",
    ],
)
def test_change_events_drop_that_change(events: list[dict[str, Any]], kind: str) -> None:
    for event in of_type(events, kind):
        assert invalidations(event) == [Invalidation("change", str(event["change"]["number"]))]


def test_change_meta_ref_drops_that_change(events: list[dict[str, Any]]) -> None:
    meta = [e for e in of_type(events, "ref-updated") if e["refUpdate"]["refName"].endswith("/meta")]
    number = str(of_type(events, "change-merged")[0]["change"]["number"])
    assert meta and all(invalidations(e) == [Invalidation("change", number)] for e in meta)


def test_branch_and_patch_set_refs_change_nothing(events: list[dict[str, Any]]) -> None:
    refs = [e for e in of_type(events, "ref-updated") if e["refUpdate"]["refName"].startswith("refs/heads/")]
    refs += [e for e in of_type(events, "ref-updated") if e["refUpdate"]["refName"].endswith("/1")]
    assert refs and all(invalidations(e) == [] for e in refs)


def test_project_created_drops_its_denials(events: list[dict[str, Any]]) -> None:
    (created,) = of_type(events, "project-created")
    assert invalidations(created) == [Invalidation("project", "record/new")]


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("refs/users/45/1000045", [Invalidation("account", "1000045")]),
        ("refs/meta/external-ids", [Invalidation("everything")]),
        ("refs/users/self", []),
        ("refs/sequences/accounts", []),
    ],
)
def test_all_users_account_refs(ref: str, want: list[Invalidation]) -> None:
    event = {"type": "ref-updated", "refUpdate": {"project": "All-Users", "refName": ref}}
    assert invalidations(event) == want


def test_account_refs_outside_all_users_are_not_accounts() -> None:
    event = {"type": "ref-updated", "refUpdate": {"project": "platform/build", "refName": "refs/users/45/1000045"}}
    assert invalidations(event) == []


@pytest.mark.parametrize(
    "event",
    [
        {"type": "reviewer-added", "change": {"number": 5}},
        {"type": "some-plugin-event"},
        {"type": "change-merged"},
        {"type": "change-merged", "change": {"number": True}},
        {"type": "change-merged", "change": "5"},
        {"type": "ref-updated", "refUpdate": "x"},
        {"type": "ref-updated", "refUpdate": {"project": 1, "refName": "refs/meta/config"}},
        {"type": 3},
        {},
    ],
)
def test_unknown_or_partial_events_change_nothing(event: dict[str, Any]) -> None:
    assert invalidations(event) == []


@pytest.mark.parametrize("line", ["", "{", "[1, 2]", '"ref-updated"', "null", b"\xff\xfe"])
def test_malformed_lines_are_refused(line: str | bytes) -> None:
    with pytest.raises(MalformedEvent):
        parse_line(line)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_no_json_value_makes_the_mapping_fail(value: Any) -> None:
    line = json.dumps(value)
    try:
        event = parse_line(line)
    except MalformedEvent:
        assert not isinstance(value, dict)
        return
    for item in invalidations(event):
        assert item.kind in {"project", "group", "account", "change", "everything"}


def test_dropped_output_drops_everything() -> None:
    assert invalidations({"type": "dropped-output"}) == [Invalidation("everything")]


def test_batch_ref_updated_is_applied_like_its_parts() -> None:
    updates = [
        {"project": "web", "refName": "refs/meta/config"},
        {"project": "All-Users", "refName": "refs/users/01/1000001"},
        {"project": "web", "refName": "refs/heads/main"},
        {"project": "web", "refName": "refs/changes/12/12/meta"},
        {"project": "web", "refName": "refs/meta/config"},
    ]
    assert invalidations({"type": "batch-ref-updated", "refUpdates": updates}) == [
        Invalidation("project", "web"),
        Invalidation("account", "1000001"),
        Invalidation("change", "12"),
    ]
    for update in updates:
        single = invalidations({"type": "ref-updated", "refUpdate": update})
        assert set(single) <= set(invalidations({"type": "batch-ref-updated", "refUpdates": updates}))


@pytest.mark.parametrize(
    "updates",
    [
        None,
        "x",
        {"project": "web"},
        [{"project": "web", "refName": "refs/heads/main"}, "x"],
        [{"project": "All-Users", "refName": 7}],
    ],
)
def test_a_batch_that_cannot_be_read_drops_everything(updates: Any) -> None:
    assert invalidations({"type": "batch-ref-updated", "refUpdates": updates}) == [Invalidation("everything")]
