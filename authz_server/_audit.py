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
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import TextIO

from ._engine import Decision
from ._input import CheckInput
from .errors import status_for

__all__ = ["AUDIT_LOGGER", "AuditLog", "stderr_audit_log"]

AUDIT_LOGGER = logging.getLogger("gerrit_authz.audit")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call for these separators
_str = encode_basestring_ascii  # what _ENCODER writes for a str (it is ensure_ascii): the C function itself


def audit_line(
    decision: Decision, inp: CheckInput | None, *, elapsed_ms: float, via: str, trace: tuple[str, str] | None = None
) -> str:
    """The line as JSON, keys in a fixed order. What the decision contributes is encoded once per distinct decision
    (:func:`_decision_fields`); per Check only the decision id and the request's own fields are."""
    identity = decision.identity
    principal = identity.principal
    account = identity.account
    error = decision.error
    fields = (
        decision.allowed,
        status_for(error).http,
        error.code if error else "",
        error.reason if error else "",
        decision.rule,
        principal.source if principal else "",
        principal.subject if principal else "",
        account.id if account else None,
        account.username if account else "",
        decision.shadow,
        decision.memo,
    )
    # A reason can quote the request's path and a subject is the token's: long ones are encoded, not kept.
    short = len(fields[3]) + len(fields[6]) <= _KEPT_TEXT
    head, tail = _decision_fields(*fields) if short else _decision_fields.__wrapped__(*fields)
    if inp is None:
        request = _NO_REQUEST
    else:
        request = (
            f',"method":{_str(inp.method)},"host":{_str(inp.host)},"path":{_str(inp.path)}'
            f',"source_address":{_str(inp.source_address)},"request_id":{_str(inp.request_id)}'
        )
    traced = "" if trace is None else f',"trace_id":{_str(trace[0])},"span_id":{_str(trace[1])}'
    elapsed = repr(round(elapsed_ms, 3))  # what JSON writes for a finite number
    return (
        f'{{"decision_id":{_str(decision.decision_id)}{head}{request},"elapsed_ms":{elapsed},"via":{_str(via)}'
        f"{tail}{traced}}}"
    )


_KEPT_TEXT = 256
_NO_REQUEST = ',"method":"","host":"","path":"","source_address":"","request_id":""'


@lru_cache(maxsize=4096)
def _decision_fields(
    allowed: bool,
    http_status: int,
    code: str,
    reason: str,
    rule: str,
    identity_source: str,
    subject: str,
    account_id: int | None,
    username: str,
    shadow: bool,
    memo: bool,
) -> tuple[str, str]:
    """The decision's part of the line, as the JSON text before and after the request's fields."""
    head = {
        "allowed": allowed,
        "http_status": http_status,
        "code": code,
        "reason": reason,
        "rule": rule,
        "identity_source": identity_source,
        "subject": subject,
        "account_id": account_id,
        "username": username,
    }
    # In shadow mode "allowed" is what the caller got; http_status and code are the real decision. "memo": answered
    # from the decision memo (the decision an identical Check got, still exactly a fresh one's).
    tail = {"shadow": shadow, "memo": memo}
    return "," + _ENCODER.encode(head)[1:-1], "," + _ENCODER.encode(tail)[1:-1]


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
    workers of ``server.workers`` share one stderr, and into a pipe a write that size is never interleaved with
    another process's (a buffered text stream would cut lines at its buffer's edge). A single line longer than
    ``PIPE_BUF`` (a path near its 8 KiB bound) is written alone and can interleave; so can writes to a file."""

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
