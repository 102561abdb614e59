"""What one ``gerrit stream-events`` line means for the cache: a pure mapping from event JSON to invalidations.

Only what a decision is made of matters: a project's access rights, labels and submit requirements
(``refs/meta/config``), group membership and accounts (refs in All-Users), and changes (status, votes,
visibility). Everything else (comments without votes, reviewers, hashtags, branch pushes) is ignored.
``dropped-output`` (Gerrit dropped events for a slow reader) means anything may have changed: everything.
``batch-ref-updated`` is read like each ``ref-updated`` it carries; one with an update that cannot be read drops
everything. A line that is not a JSON object is :class:`MalformedEvent`; an object of an unknown type maps to
nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ALL_USERS",
    "CHANGE_EVENTS",
    "DROPPED_OUTPUT",
    "Invalidation",
    "MalformedEvent",
    "event_type",
    "invalidations",
    "parse_line",
]

ALL_USERS = "All-Users"
#: Change events after which a cached change (status, labels, private / WIP state) may be wrong.
CHANGE_EVENTS = frozenset(
    {
        "patchset-created",
        "comment-added",  # a vote is a review with a comment
        "vote-deleted",
        "change-merged",
        "change-abandoned",
        "change-restored",
        "change-deleted",
        "private-state-changed",
        "wip-state-changed",
        "topic-changed",
    }
)
# NoteDb sharding: refs/users/45/1000045, refs/groups/ab/abcdef..., refs/changes/45/12345/meta
_USER_REF = re.compile(r"^refs/users/\d{2}/(\d+)$")
_CHANGE_META_REF = re.compile(r"^refs/changes/\d{2}/(\d+)/meta$")

#: Gerrit's marker that it dropped events queued for this (slow) reader.
DROPPED_OUTPUT = "dropped-output"

Kind = Literal["project", "group", "account", "change", "everything"]


class MalformedEvent(ValueError):
    """A stream line that is not a JSON object."""


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One call to make on the cache: ``kind`` names the ``CachedGerrit.invalidate`` argument, ``key`` its value."""

    kind: Kind
    key: str = ""


def parse_line(line: str | bytes) -> dict[str, Any]:
    """One stream line as a JSON object; :class:`MalformedEvent` otherwise."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedEvent("not a JSON object")
    return data


def event_type(event: dict[str, Any]) -> str:
    """The event's ``type``, or ``""`` when it has none."""
    kind = event.get("type")
    return kind if isinstance(kind, str) else ""


def _readable(update: Any) -> bool:
    return (
        isinstance(update, dict) and isinstance(update.get("project"), str) and isinstance(update.get("refName"), str)
    )


def _ref_updated(update: Any) -> list[Invalidation]:
    if not _readable(update):
        return []
    project, ref = update["project"], update["refName"]
    if ref == "refs/meta/config":
        # Access rights, the parent, labels and submit requirements: the project, everything inheriting, and their
        # cached changes (the cache drops all of them together).
        return [Invalidation("project", project)]
    if m := _CHANGE_META_REF.match(ref):
        # Every change update is a NoteDb commit, including those no change event reports.
        return [Invalidation("change", m.group(1))]
    if project != ALL_USERS:
        return []
    if ref.startswith("refs/groups/"):
        # Memberships are cached per account, and access answers and capabilities follow from memberships.
        return [Invalidation("group", ref.removeprefix("refs/groups/")), Invalidation("project", "All-Projects")]
    if m := _USER_REF.match(ref):
        return [Invalidation("account", m.group(1))]
    if ref == "refs/meta/external-ids":
        # Usernames, emails and HTTP passwords; the update does not say whose, so nothing about accounts holds.
        return [Invalidation("everything")]
    return []


def invalidations(event: dict[str, Any]) -> list[Invalidation]:
    """The invalidations ``event`` calls for (none for an event that changes nothing a decision uses)."""
    kind = event_type(event)
    if kind == DROPPED_OUTPUT:
        return [Invalidation("everything")]
    if kind == "ref-updated":
        return _ref_updated(event.get("refUpdate"))
    if kind == "batch-ref-updated":
        updates = event.get("refUpdates")
        if not isinstance(updates, list) or not all(_readable(u) for u in updates):
            return [Invalidation("everything")]  # a batch we cannot read may have held anything
        found: list[Invalidation] = []
        for update in updates:
            for item in _ref_updated(update):
                if item not in found:
                    found.append(item)
        return found
    if kind in CHANGE_EVENTS:
        change = event.get("change")
        number = change.get("number") if isinstance(change, dict) else None
        if isinstance(number, int) and not isinstance(number, bool):
            return [Invalidation("change", str(number))]
        if isinstance(number, str) and number.isdigit():
            return [Invalidation("change", number)]
        return []
    if kind == "project-created":
        # Answers about a project that did not exist (denials) must not outlive its creation.
        name = event.get("projectName")
        return [Invalidation("project", name)] if isinstance(name, str) and name else []
    return []
