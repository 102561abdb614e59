"""Evaluating a requirement tree against Gerrit facts, with a trace of every step.

Three-valued (Kleene): each node is satisfied, unsatisfied, or *undecided*, and an undecided node carries the
error that explains it:

- an anonymous caller at a Gerrit requirement — nobody to ask Gerrit about (401 ``missing_credentials``);
- an identity without a Gerrit account — Gerrit cannot say (403 ``requirement_failed``);
- a credential that failed verification (401), or Gerrit unreachable with nothing usable cached (503).

``not`` keeps an undecided node undecided; ``any`` is satisfied if one child is, ``all`` unsatisfied if one
child is, and otherwise an undecided child makes the whole node undecided. So "cannot tell" never becomes "yes"
whatever the combinators around it. Only ``authenticated`` is decided for an anonymous caller: it is plainly
false. Independent children are looked up concurrently.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ._claims import Claim, claim_matches, claim_value_type, filled, resolve_claim
from ._deadline import Deadline
from ._facts import Account, GerritFacts
from ._identity import Identity
from ._requirements import (
    All,
    Any_,
    Anyone,
    Authenticated,
    Capability,
    Change,
    Group,
    Not,
    Permission,
    Requirement,
)
from ._templates import fill
from .errors import AuthzError, PermissionDenied, Unauthenticated, Unavailable

__all__ = ["Context", "Result", "TraceEntry", "evaluate", "is_group_uuid"]

# Gerrit's internal group UUIDs are 40 hex digits; system and external groups have a scheme
# ("global:Registered-Users", "ldap:cn=...").
_GROUP_UUID = re.compile(r"[0-9a-fA-F]{40}|[a-z][a-z0-9+.-]*:.+", re.S)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    kind: str
    target: str
    result: str  # satisfied | unsatisfied | undecided
    source: str = ""
    detail: str = ""
    depth: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool | None  # None: undecided, and ``error`` says why
    error: AuthzError | None = None
    reason: str = ""  # the first unmet requirement, for the deny body


def _undecided(error: AuthzError, reason: str) -> Result:
    return Result(None, error, reason=reason)


# Which undecided child speaks for an undecided node: an outage first (a retry may decide it), then a missing or
# bad credential (logging in may), then a missing account.
def _rank(result: Result) -> int:
    return 0 if isinstance(result.error, Unavailable) else 1 if isinstance(result.error, Unauthenticated) else 2


def is_group_uuid(value: str) -> bool:
    """Whether a ``group:`` value names a group by UUID (compared with UUIDs only) rather than by name."""
    return _GROUP_UUID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Context:
    identity: Identity
    captures: Mapping[str, str]
    facts: GerritFacts
    deadline: Deadline


_KIND = {
    All: "all",
    Any_: "any",
    Not: "not",
    Anyone: "anyone",
    Authenticated: "authenticated",
    Group: "group",
    Permission: "permission",
    Capability: "capability",
    Change: "change",
    Claim: "claim",
}


def _values(req: Requirement, captures: Mapping[str, str]) -> tuple[str, ...]:
    """A leaf's values with the path's captures filled in (once per evaluation)."""
    if isinstance(req, Group):
        return (fill(req.group, captures),)
    if isinstance(req, Capability):
        return (fill(req.capability, captures),)
    if isinstance(req, Permission):
        return tuple(fill(v, captures) for v in (req.project, req.ref, req.perm))
    if isinstance(req, Change):
        return (fill(req.id, captures),)
    if isinstance(req, Claim):
        return (req.describe(filled(req, captures)),)
    return ()


async def evaluate(req: Requirement, ctx: Context, depth: int = 0) -> tuple[Result, list[TraceEntry]]:
    """The result of ``req`` and the trace of it and its children (in tree order)."""
    kind = _KIND[type(req)]
    if isinstance(req, All | Any_ | Not):
        children = (req.of,) if isinstance(req, Not) else req.of
        if len(children) == 1:
            outcomes = [await evaluate(children[0], ctx, depth + 1)]
        else:
            outcomes = list(await asyncio.gather(*(evaluate(c, ctx, depth + 1) for c in children)))
        result = _combine(req, [r for r, _ in outcomes])
        trace = [TraceEntry(kind, "", _word(result), depth=depth, detail=result.reason if not result.ok else "")]
        for _, sub in outcomes:
            trace.extend(sub)
        return result, trace
    values = _values(req, ctx.captures)
    target = " ".join(values)
    result, source, detail = await _leaf(req, values, target, ctx)
    return result, [TraceEntry(kind, target, _word(result), source, detail or result.reason, depth)]


def _word(result: Result) -> str:
    return "undecided" if result.ok is None else ("satisfied" if result.ok else "unsatisfied")


def _combine(req: All | Any_ | Not, results: list[Result]) -> Result:
    if isinstance(req, Not):
        (inner,) = results
        if inner.ok is None:
            return inner  # not(undecided) is undecided
        return Result(not inner.ok, reason="" if inner.ok is False else "not: the inner requirement is satisfied")
    decisive = not isinstance(req, All)  # any: one True decides; all: one False decides
    for r in results:
        if r.ok is decisive:
            return r if not decisive else Result(True)
    undecided = [r for r in results if r.ok is None]
    if undecided:
        return min(undecided, key=_rank)
    if decisive:  # any: nothing satisfied
        reasons = "; ".join(r.reason for r in results if r.reason)
        return Result(False, reason=f"none of: {reasons}")
    return Result(True)


def _name(identity: Identity) -> str:
    p = identity.principal
    return (identity.account.username if identity.account and identity.account.username else "") or (
        p.subject if p else "anonymous"
    )


async def _leaf(req: Requirement, values: tuple[str, ...], target: str, ctx: Context) -> tuple[Result, str, str]:
    if isinstance(req, Anyone):
        return Result(True), "", ""
    identity = ctx.identity
    if identity.error is not None:
        return _undecided(identity.error, identity.error.reason), "", identity.error.detail
    label = f"{_KIND[type(req)]} {target!r}" if target else _KIND[type(req)]
    if identity.principal is None:
        if isinstance(req, Authenticated):
            return Result(False, reason=f"{label}: no credential"), "", ""
        reason = f"{label}: no credential"
        return _undecided(Unauthenticated("missing_credentials", reason), reason), "", ""
    if isinstance(req, Authenticated):
        return Result(True), "", ""
    if isinstance(req, Claim):
        return _claim_leaf(req, identity, label, ctx)
    account = identity.account
    if account is None:
        reason = f"{label}: {_name(identity)} has no Gerrit account"
        return _undecided(PermissionDenied("requirement_failed", reason), reason), "", identity.no_account
    try:
        return await _gerrit_leaf(req, values, account, label, ctx)
    except AuthzError as exc:
        return _undecided(exc, f"{label}: {exc.reason}"), "", exc.detail


async def _gerrit_leaf(
    req: Requirement, values: tuple[str, ...], account: Account, label: str, ctx: Context
) -> tuple[Result, str, str]:
    facts, deadline, who = ctx.facts, ctx.deadline, account.username or str(account.id)
    if isinstance(req, Group):
        groups = await facts.groups(account.id, deadline)
        (name,) = values
        # A UUID only ever equals a UUID and a name a name: a group *named* like another's UUID is not that group.
        if is_group_uuid(name):
            ok = any(g.id.lower() == name.lower() for g in groups.value)
        else:
            ok = any(g.name == name for g in groups.value)
        return _leaf_result(ok, f"{label}: {who} is not a member"), groups.source, groups.detail
    if isinstance(req, Capability):
        caps = await facts.capabilities(account.id, deadline)
        (capability,) = values
        ok = capability in caps.value
        return _leaf_result(ok, f"{label}: {who} lacks the capability"), caps.source, caps.detail
    if isinstance(req, Permission):
        project, ref, perm = values
        access = await facts.check_access(project, account.id, ref, perm, deadline)
        reason = f"permission {perm!r} on {project!r} {ref!r}: denied for {who}"
        return (
            _leaf_result(access.value.allowed, reason),
            access.source,
            access.value.message or access.detail,
        )
    assert isinstance(req, Change)
    (change_id,) = values
    change = await facts.change(change_id, deadline)
    info = change.value
    if info is None:
        return Result(False, reason=f"{label}: no such change"), change.source, change.detail
    problems = []
    if req.status is not None and info.status != req.status:
        problems.append(f"status is {info.status}, needs {req.status}")
    for name, minimum in req.labels:
        votes = info.labels.get(name)
        if votes is None or votes.max < minimum or votes.blocking:
            have = (
                "no votes" if votes is None else f"best vote {votes.max:+d}" + (" (blocked)" if votes.blocking else "")
            )
            problems.append(f"{name} needs {minimum:+d}, has {have}")
    if req.submittable is not None and info.submittable != req.submittable:
        problems.append(f"submittable is {info.submittable}, needs {req.submittable}")
    return _leaf_result(not problems, f"{label}: {'; '.join(problems)}"), change.source, change.detail


def _claim_leaf(req: Claim, identity: Identity, label: str, ctx: Context) -> tuple[Result, str, str]:
    """A claim needs no Gerrit. The trace shows the claim's type and the outcome, never its value."""
    principal = identity.principal
    assert principal is not None
    if not principal.claims:
        # No token at all (Basic, mTLS) is not "a token without the claim": like a missing account it is
        # undecided with a 403, so `not: {claim: ...}` cannot turn it into a pass.
        reason = f"{label}: {_name(identity)} has no token claims ({principal.source})"
        return _undecided(PermissionDenied("requirement_failed", reason), reason), "token", "no token"
    value = resolve_claim(principal.claims, req.name)
    ok = claim_matches(req, value, filled(req, ctx.captures))
    detail = f"claim is {claim_value_type(value)}; {'matched' if ok else 'not matched'}"
    return _leaf_result(ok, f"{label}: not in the token ({claim_value_type(value)})"), "token", detail


def _leaf_result(ok: bool, reason: str) -> Result:
    return Result(True) if ok else Result(False, reason=reason)
