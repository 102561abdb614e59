"""``gerrit_authz.v1.Admin``: Explain (one Check with its trace) and Invalidate (drop cached answers)."""

from __future__ import annotations

import time
from typing import Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc
from google.protobuf.message import DecodeError

from ._audit import AuditLog
from ._deadline import Deadline
from ._engine import Decider, Decision
from ._facts import Invalidator
from ._response import allowed_headers, denied_body, denied_headers, to_check_response
from ._servicer import run_check
from .checkrequest import build_check_request, join_headers
from .errors import AuthzError, status_for

__all__ = ["AdminServicer", "check_request_from_explain", "explain_response"]


def check_request_from_explain(request: admin_pb2.ExplainRequest) -> CheckRequest:
    """The CheckRequest to explain: the serialized one if given, else one built from the plain fields."""
    if request.check_request:
        return CheckRequest.FromString(request.check_request)
    return build_check_request(
        request.method or "GET",
        request.path or "/",
        host=request.host,
        headers=join_headers(request.headers.items()),
        source_address=request.source_address,
        context_extensions=request.context_extensions,
    )


def explain_response(decision: Decision, check_response_bytes: bytes, retry_after: int) -> admin_pb2.ExplainResponse:
    """Decision → ExplainResponse (also used by the CLI's ``explain``)."""
    identity = decision.identity
    principal, account = identity.principal, identity.account
    allowed = decision.allowed
    return admin_pb2.ExplainResponse(
        decision_id=decision.decision_id,
        allowed=allowed,
        code=decision.error.code if decision.error else "",
        reason=decision.reason,
        rule=decision.rule,
        identity=admin_pb2.Identity(
            authenticated=identity.authenticated,
            source=principal.source if principal else "",
            subject=principal.subject if principal else "",
            account_id=account.id if account else 0,
            username=account.username if account else "",
            email=account.email if account else "",
        ),
        requirements=[
            admin_pb2.RequirementTrace(
                kind=t.kind, target=t.target, result=t.result, source=t.source, detail=t.detail, depth=t.depth
            )
            for t in decision.trace
        ],
        http_status=status_for(None if allowed else decision.error).http,
        headers=allowed_headers(decision) if allowed else denied_headers(decision, retry_after=retry_after),
        body="" if allowed else denied_body(decision),
        check_response=check_response_bytes,
        memo=decision.memo,
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self,
        authorizer: Decider,
        cache: Invalidator | None,
        *,
        check_timeout: float,
        retry_after: int,
        outages_as_errors: bool = True,
        audit: AuditLog | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._audit = audit or AuditLog()
        self._cache = cache
        self._check_timeout = check_timeout
        self._retry_after = retry_after
        self._outages_as_errors = outages_as_errors

    async def Explain(
        self,
        request: admin_pb2.ExplainRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ExplainResponse:
        start = time.perf_counter()
        try:
            check_request = check_request_from_explain(request)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "check_request is not a serialized CheckRequest")
        deadline = Deadline.for_call(context.time_remaining(), self._check_timeout)
        decision, inp = await run_check(self._authorizer, check_request, deadline)
        self._audit(decision, inp, elapsed_ms=(time.perf_counter() - start) * 1000, via="explain")
        response = to_check_response(
            decision, inp, retry_after=self._retry_after, outages_as_errors=self._outages_as_errors
        )
        return explain_response(decision, response.SerializeToString(), self._retry_after)

    async def Invalidate(
        self,
        request: admin_pb2.InvalidateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.InvalidateResponse:
        target = request.WhichOneof("target")
        if target is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set one of account, project, group, change or all")
        if self._cache is None:
            return admin_pb2.InvalidateResponse(removed=0)
        try:
            if target == "all":
                if not request.all:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "all must be true")
                removed = await self._cache.invalidate(everything=True)
            else:
                value = getattr(request, target)
                if not value:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{target} must not be empty")
                removed = await self._cache.invalidate(**{target: value})
        except AuthzError as exc:  # e.g. the shared Redis is down: say so, the entries are still there
            await context.abort(status_for(exc).grpc, f"{exc.code}: {exc.reason}")
        return admin_pb2.InvalidateResponse(removed=removed)
