"""One structured (JSON) audit line per decision. Never a credential: no headers, no query string.

By default lines go to the ``gerrit_authz.audit`` logger (so tests and embedding code can route them). ``gerrit-authz
serve`` writes them straight to a buffered stderr instead (:func:`stderr_audit_log`): at thousands of decisions a
second the logging machinery and a flush per line cost more than the decision itself.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
from collections.abc import Callable
from typing import TextIO

from ._engine import Decision
from ._input import CheckInput
from .errors import status_for

__all__ = ["AUDIT_LOGGER", "AuditLog", "stderr_audit_log"]

AUDIT_LOGGER = logging.getLogger("gerrit_authz.audit")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call for these separators


def audit_line(
    decision: Decision, inp: CheckInput | None, *, elapsed_ms: float, via: str, trace: tuple[str, str] | None = None
) -> str:
    identity = decision.identity
    principal = identity.principal
    account = identity.account
    line = {
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
        # In shadow mode "allowed" is what the caller got; http_status and code are the real decision.
        "shadow": decision.shadow,
        # Answered from the decision memo: the decision an identical Check got, still exactly a fresh one's.
        "memo": decision.memo,
    }
    if trace is not None:  # with tracing on: the decision's OpenTelemetry trace and span
        line["trace_id"], line["span_id"] = trace
    return _ENCODER.encode(line)


class AuditLog:
    """Writes one audit line per decision: to ``write`` (a line sink) if given, else to :data:`AUDIT_LOGGER`."""

    def __init__(self, write: Callable[[str], object] | None = None, flush: Callable[[], object] | None = None) -> None:
        self._write = write
        self.flush: Callable[[], object] = flush or (lambda: None)

    def __call__(
        self,
        decision: Decision,
        inp: CheckInput | None,
        *,
        elapsed_ms: float,
        via: str = "check",
        trace: tuple[str, str] | None = None,
    ) -> None:
        if self._write is not None:
            self._write(audit_line(decision, inp, elapsed_ms=elapsed_ms, via=via, trace=trace) + "\n")
        elif AUDIT_LOGGER.isEnabledFor(logging.INFO):
            AUDIT_LOGGER.info(audit_line(decision, inp, elapsed_ms=elapsed_ms, via=via, trace=trace))


class _LineWriter:
    """Buffers whole lines and writes them in chunks of at most ``PIPE_BUF`` bytes, each holding whole lines: the
    workers of ``server.workers`` share one stderr, and a write that size is never interleaved with another
    process's, so no audit line is ever torn (a buffered text stream would cut lines at its buffer's edge)."""

    def __init__(self, fd: int, limit: int = 1 << 16) -> None:
        self._fd = fd
        self._limit = limit
        self._lines: list[bytes] = []
        self._size = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        self._lines.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > select.PIPE_BUF:
                self._out(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._out(b"".join(chunk))

    def _out(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def stderr_audit_log(stream: TextIO | None = None) -> AuditLog:
    """Lines to a 64 KiB-buffered writer on stderr's file descriptor; the server flushes it a few times a second."""
    out = _LineWriter((stream or sys.stderr).fileno())
    return AuditLog(out.write, out.flush)
