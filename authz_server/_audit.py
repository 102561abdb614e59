"""One structured (JSON) audit line per decision. Never a credential: no headers, no query string."""

from __future__ import annotations

import json
import logging

from ._engine import Decision
from ._input import CheckInput
from .errors import status_for

__all__ = ["AUDIT_LOGGER", "audit"]

AUDIT_LOGGER = logging.getLogger("gerrit_authz.audit")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call for these separators


def audit(decision: Decision, inp: CheckInput | None, *, elapsed_ms: float, via: str = "check") -> None:
    if not AUDIT_LOGGER.isEnabledFor(logging.INFO):
        return
    identity = decision.identity
    principal = identity.principal
    account = identity.account
    record = {
        "decision_id": decision.decision_id,
        "allowed": decision.allowed,
        "http_status": status_for(decision.error).http,
        "code": decision.error.code if decision.error else "",
        "reason": decision.reason,
        "rule": decision.rule,
        "identity_source": principal.source if principal else "",
        "subject": principal.subject if principal else "",
        "account_id": account.id if account else None,
        "username": account.username if account else "",
        "method": inp.method if inp else "",
        "host": inp.host if inp else "",
        "path": inp.path if inp else "",
        "source_address": inp.source_address if inp else "",
        "request_id": inp.request_id if inp else "",
        "elapsed_ms": round(elapsed_ms, 3),
        "via": via,
    }
    AUDIT_LOGGER.info(_ENCODER.encode(record))
