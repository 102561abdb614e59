"""The decision pipeline: input → rule → identity → Gerrit facts → :class:`Decision`.

This is shared by ``Authorization/Check``, ``Admin/Explain`` and ``gerrit-authz explain``, so all three agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from ._cache import recording_facts
from ._deadline import Deadline
from ._evaluate import Context, TraceEntry, evaluate
from ._facts import GerritFacts
from ._identity import ANONYMOUS, Identity, IdentityResolver
from ._input import CheckInput
from ._policy import Match, Policy
from .errors import AuthzError, PermissionDenied, Unauthenticated, status_for

if TYPE_CHECKING:
    from ._memo import DecisionMemo

__all__ = ["Authorizer", "Decider", "Decision", "new_decision_id"]


def new_decision_id() -> str:
    return os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class Decision:
    """An allow (``error is None``) or a deny carrying the error that explains it.

    ``shadow``: decided in shadow mode. ``error`` is still the real decision, but the request is let through.
    ``challenges``: the ``www-authenticate`` schemes a 401 offers (one per configured credential kind).
    """

    decision_id: str
    error: AuthzError | None
    rule: str = ""
    identity: Identity = ANONYMOUS
    trace: list[TraceEntry] = field(default_factory=list)
    shadow: bool = False
    challenges: tuple[str, ...] = ("Bearer",)
    #: answered from the decision memo (the same decision as a fresh one, made earlier; see :mod:`._memo`)
    memo: bool = False

    @property
    def allowed(self) -> bool:
        """What the caller is answered: allowed when the real decision is, or when it is a shadowed deny."""
        return self.error is None or self.shadow

    @property
    def reason(self) -> str:
        return "" if self.error is None else self.error.reason


class Decider(Protocol):
    """What the servicers call: an :class:`Authorizer`, or a live one that a reload swaps."""

    async def decide(self, inp: CheckInput, deadline: Deadline, decision_id: str | None = None) -> Decision: ...


def _shadowed(decision: Decision, shadow: bool) -> Decision:
    """In shadow mode a definite deny (401/403) becomes a let-through. A malformed request (400) or an
    undecidable one (503) stays enforced: shadow mode watches the policy, it never turns an error into an allow."""
    if not shadow or decision.error is None:
        return replace(decision, shadow=shadow) if shadow else decision
    if status_for(decision.error).http in (401, 403):
        return replace(decision, shadow=True)
    return decision


class Authorizer:
    """Decides one request. Dependencies come in through the constructor; nothing here does I/O itself.

    ``shadow``: the whole policy runs in shadow mode (``server.mode: shadow``); a rule may also be shadowed alone.
    ``challenges``: the schemes a 401 offers (``_response.challenge_schemes`` of the identity configuration).
    ``memo``: remembers whole decisions while everything they read is unchanged (``cache.decision_memo``).
    """

    def __init__(
        self,
        policy: Policy,
        identity: IdentityResolver,
        facts: GerritFacts,
        *,
        shadow: bool = False,
        challenges: tuple[str, ...] = ("Bearer",),
        memo: DecisionMemo | None = None,
    ) -> None:
        self._policy = policy
        self._identity = identity
        self._facts = facts
        self._shadow = shadow
        self._challenges = challenges
        self.memo = memo

    async def decide(self, inp: CheckInput, deadline: Deadline, decision_id: str | None = None) -> Decision:
        decision_id = decision_id or new_decision_id()
        try:
            match = self._policy.match(inp)
        except AuthzError as exc:  # a path that cannot be matched (400): never shadowed
            return Decision(decision_id, exc)
        shadow = self._shadow or (match is not None and match.rule.shadow)
        memo = self.memo
        if memo is None or match is None:
            return _shadowed(await self._decided(inp, match, deadline, decision_id), shadow)
        key = memo.key(match, inp)
        remembered = await memo.get(key)
        if remembered is not None:
            r = remembered  # built directly: dataclasses.replace costs a few µs on the path this exists for
            hit = Decision(decision_id, r.error, r.rule, r.identity, r.trace, r.shadow, r.challenges, memo=True)
            return _shadowed(hit, shadow)
        snapshot = await memo.snapshot()  # before the first lookup: any invalidation after it is seen by a hit
        with recording_facts() as used:
            decision = await self._decided(inp, match, deadline, decision_id)
        memo.put(key, decision, snapshot, used)
        return _shadowed(decision, shadow)

    async def _decided(self, inp: CheckInput, match: Match | None, deadline: Deadline, decision_id: str) -> Decision:
        try:
            decision = await self._decide(inp, match, deadline, decision_id)
        except AuthzError as exc:
            decision = Decision(decision_id, exc)
        if isinstance(decision.error, Unauthenticated) and decision.challenges != self._challenges:
            decision = replace(decision, challenges=self._challenges)
        return decision

    async def _decide(self, inp: CheckInput, match: Match | None, deadline: Deadline, decision_id: str) -> Decision:
        if match is None:
            return Decision(
                decision_id, PermissionDenied("no_matching_rule", f"no rule matches {inp.method} {inp.path}")
            )
        rule = match.rule
        identity = await self._identity.resolve(inp, deadline) if rule.needs_identity else ANONYMOUS
        ctx = Context(identity, match.captures, self._facts, deadline)
        result, trace = await evaluate(rule.require, ctx)
        error: AuthzError | None = None
        if result.ok is None:
            assert result.error is not None
            error = result.error
            if not isinstance(error, Unauthenticated) or error.code == "missing_credentials":
                # Keep the stable code, but name the rule and the requirement that could not be decided.
                error = type(error)(error.code, f"rule {rule.name!r}: {result.reason}", detail=error.detail)
        elif not result.ok:
            reason = f"rule {rule.name!r}: {result.reason}"
            if identity.principal is None and identity.error is None:  # anonymous: logging in may help
                error = Unauthenticated("missing_credentials", reason)
            else:
                error = PermissionDenied("requirement_failed", reason)
        return Decision(decision_id, error, rule.name, identity, trace)
