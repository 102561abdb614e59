"""The policy language's requirement tree: parsed from YAML into frozen nodes.

Accepted forms (one key per mapping)::

    anyone | authenticated
    group: NAME-or-UUID
    permission: {project, ref, perm}
    capability: NAME
    change: {id, status?, labels?: {Label: min}, submittable?}
    claim: {name, equals | contains | any_of}   (see _claims)
    all: [...] | any: [...] | not: REQUIREMENT

String values may hold ``{capture}`` placeholders filled from the matched path template.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._claims import Claim, parse_claim

__all__ = [
    "KINDS",
    "All",
    "Any_",
    "Anyone",
    "Authenticated",
    "Capability",
    "Change",
    "Claim",
    "Group",
    "Not",
    "Permission",
    "Requirement",
    "needs_identity",
    "parse_requirement",
    "placeholders",
    "walk",
]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CHANGE_STATUSES = frozenset({"NEW", "MERGED", "ABANDONED"})
#: The mapping kinds of the language (besides the words ``anyone`` and ``authenticated``); a key of a requirement
#: mapping that is none of these is reported as an unknown key. ``claim`` is the contract's token-claim kind.
KINDS = frozenset({"group", "permission", "capability", "change", "claim", "all", "any", "not"})


@dataclass(frozen=True, slots=True)
class Anyone:
    pass


@dataclass(frozen=True, slots=True)
class Authenticated:
    pass


@dataclass(frozen=True, slots=True)
class Group:
    group: str


@dataclass(frozen=True, slots=True)
class Permission:
    project: str
    ref: str
    perm: str


@dataclass(frozen=True, slots=True)
class Capability:
    capability: str


@dataclass(frozen=True, slots=True)
class Change:
    id: str
    status: str | None = None
    labels: tuple[tuple[str, int], ...] = ()
    submittable: bool | None = None


@dataclass(frozen=True, slots=True)
class All:
    of: tuple[Requirement, ...]


@dataclass(frozen=True, slots=True)
class Any_:
    of: tuple[Requirement, ...]


@dataclass(frozen=True, slots=True)
class Not:
    of: Requirement


Requirement: TypeAlias = Anyone | Authenticated | Group | Permission | Capability | Change | Claim | All | Any_ | Not


class RequirementError(ValueError):
    """A requirement that cannot be parsed; ``path`` is relative to the ``require`` key.

    ``problems`` lists every ``(path, reason)`` found (the first is ``path``/``reason``), so that a config check
    names each unknown key at once; the message has one ``path: reason`` line per problem.
    """

    def __init__(self, path: str, reason: str, *, more: tuple[tuple[str, str], ...] = ()) -> None:
        self.problems = ((path, reason), *more)
        super().__init__("\n".join(f"{p}: {r}" if p else r for p, r in self.problems))
        self.path = path
        self.reason = reason

    @classmethod
    def combine(cls, errors: list[RequirementError]) -> RequirementError:
        """One error carrying the problems of all ``errors`` (which must not be empty)."""
        problems = [problem for error in errors for problem in error.problems]
        (path, reason), *more = problems
        return cls(path, reason, more=tuple(more))


def _sub(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequirementError(path, "must be a non-empty string")
    return value


def _mapping(value: Any, path: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RequirementError(path, "must be a mapping")
    errors = [RequirementError(_sub(path, str(key)), "unknown key") for key in value if key not in required | optional]
    errors += [RequirementError(_sub(path, key), "is required") for key in sorted(required - set(value))]
    if errors:
        raise RequirementError.combine(errors)
    return value


def _list(value: Any, path: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise RequirementError(path, "must be a non-empty list of requirements")
    parsed: list[Requirement] = []
    errors: list[RequirementError] = []
    for i, item in enumerate(value):
        try:
            parsed.append(parse_requirement(item, _sub(path, i)))
        except RequirementError as exc:  # keep going: every bad branch is reported, not only the first
            errors.append(exc)
    if errors:
        raise RequirementError.combine(errors)
    return tuple(parsed)


def parse_requirement(raw: Any, path: str = "") -> Requirement:
    """Parse one YAML requirement; raises :class:`RequirementError` with the failing key path."""
    if raw == "anyone":
        return Anyone()
    if raw == "authenticated":
        return Authenticated()
    if isinstance(raw, str):
        raise RequirementError(path, f"unknown requirement {raw!r} (expected anyone, authenticated or a mapping)")
    if not isinstance(raw, Mapping) or not raw:
        raise RequirementError(path, "must be 'anyone', 'authenticated' or a mapping with exactly one kind")
    if len(raw) > 1:
        unknown = [RequirementError(_sub(path, str(k)), "unknown key") for k in raw if k not in KINDS]
        if unknown:
            raise RequirementError.combine(unknown)
        kinds = ", ".join(str(k) for k in raw)
        raise RequirementError(path, f"one kind per mapping, found {kinds} (combine them with all: or any:)")
    ((kind, value),) = raw.items()
    here = _sub(path, str(kind))
    if kind == "group":
        return Group(_string(value, here))
    if kind == "capability":
        return Capability(_string(value, here))
    if kind == "permission":
        spec = _mapping(value, here, {"project", "ref", "perm"}, set())
        return Permission(*(_string(spec[k], _sub(here, k)) for k in ("project", "ref", "perm")))
    if kind == "change":
        return _parse_change(value, here)
    if kind == "claim":
        claim, key, reason = parse_claim(value)
        if claim is None:
            raise RequirementError(_sub(here, key) if key else here, reason)
        return claim
    if kind == "all":
        return All(_list(value, here))
    if kind == "any":
        return Any_(_list(value, here))
    if kind == "not":
        return Not(parse_requirement(value, here))
    raise RequirementError(here, "unknown requirement kind")


def _parse_change(value: Any, path: str) -> Change:
    spec = _mapping(value, path, {"id"}, {"status", "labels", "submittable"})
    change_id = spec["id"]
    if isinstance(change_id, int) and not isinstance(change_id, bool):
        change_id = str(change_id)
    status = spec.get("status")
    if status is not None and (not isinstance(status, str) or status.upper() not in _CHANGE_STATUSES):
        raise RequirementError(_sub(path, "status"), f"must be one of {sorted(_CHANGE_STATUSES)}")
    labels = spec.get("labels", {})
    if not isinstance(labels, Mapping):
        raise RequirementError(_sub(path, "labels"), "must be a mapping of label name to minimum vote")
    for name, minimum in labels.items():
        if not isinstance(minimum, int) or isinstance(minimum, bool):
            raise RequirementError(_sub(_sub(path, "labels"), str(name)), "minimum vote must be an integer")
    submittable = spec.get("submittable")
    if submittable is not None and not isinstance(submittable, bool):
        raise RequirementError(_sub(path, "submittable"), "must be true or false")
    return Change(
        id=_string(change_id, _sub(path, "id")),
        status=status.upper() if status else None,
        labels=tuple((str(k), int(v)) for k, v in labels.items()),
        submittable=submittable,
    )


def walk(req: Requirement) -> Iterator[Requirement]:
    """Every node of the tree, depth first."""
    yield req
    if isinstance(req, All | Any_):
        for child in req.of:
            yield from walk(child)
    elif isinstance(req, Not):
        yield from walk(req.of)


def placeholders(req: Requirement) -> set[str]:
    """Names of the ``{capture}`` placeholders used anywhere in the tree."""
    names: set[str] = set()
    for node in walk(req):
        values: tuple[str, ...] = ()
        if isinstance(node, Group):
            values = (node.group,)
        elif isinstance(node, Capability):
            values = (node.capability,)
        elif isinstance(node, Permission):
            values = (node.project, node.ref, node.perm)
        elif isinstance(node, Change):
            values = (node.id,)
        elif isinstance(node, Claim):
            values = node.strings()
        for value in values:
            names.update(_PLACEHOLDER.findall(value))
    return names


def needs_identity(req: Requirement) -> bool:
    """False only for trees that never look at the caller (plain ``anyone``)."""
    return any(not isinstance(node, Anyone | All | Any_ | Not) for node in walk(req))
