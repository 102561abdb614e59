"""The decision pipeline: input → rule → identity → Gerrit facts → :class:`Decision`.

This is shared by ``Authorization/Check``, ``Admin/Explain`` and ``gerrit-authz explain``, so all three agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._deadline import Deadline
from ._evaluate import Context, TraceEntry, evaluate
from ._facts import GerritFacts
from ._identity import ANONYMOUS, Identity, IdentityResolver
from ._input import CheckInput
from ._policy import Policy
from .errors import AuthzError, PermissionDenied, Unauthenticated

__all__ = ["Authorizer", "Decision", "new_decision_id"]


def new_decision_id() -> str:
    return os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class Decision:
    """An allow (``error is None``) or a deny carrying the error that explains it."""

    decision_id: str
    error: AuthzError | None
    rule: str = ""
    identity: Identity = ANONYMOUS
    trace: list[TraceEntry] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str:
        return "" if self.error is None else self.error.reason


class Authorizer:
    """Decides one request. Dependencies come in through the constructor; nothing here does I/O itself."""

    def __init__(self, policy: Policy, identity: IdentityResolver, facts: GerritFacts) -> None:
        self._policy = policy
        self._identity = identity
        self._facts = facts

    async def decide(self, inp: CheckInput, deadline: Deadline, decision_id: str | None = None) -> Decision:
        decision_id = decision_id or new_decision_id()
        try:
            return await self._decide(inp, deadline, decision_id)
        except AuthzError as exc:
            return Decision(decision_id, exc)

    async def _decide(self, inp: CheckInput, deadline: Deadline, decision_id: str) -> Decision:
        match = self._policy.match(inp)
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
