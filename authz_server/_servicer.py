"""The thin ``envoy.service.auth.v3.Authorization`` servicer: request → input → decision → response."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from ._audit import AuditLog
from ._deadline import Deadline
from ._engine import Decider, Decision, new_decision_id
from ._input import CheckInput, parse_check_request
from ._metrics import Metrics
from ._response import to_check_response
from .errors import AuthzError, Unavailable

if TYPE_CHECKING:
    from ._telemetry import Tracing

__all__ = ["AuthorizationServicer", "run_check"]

log = logging.getLogger("gerrit_authz.check")


async def run_check(
    authorizer: Decider,
    request: CheckRequest,
    deadline: Deadline,
) -> tuple[Decision, CheckInput | None]:
    """Decide one CheckRequest. Never raises and never allows on error."""
    inp: CheckInput | None = None
    try:
        inp = parse_check_request(request)
        return await authorizer.decide(inp, deadline), inp
    except AuthzError as exc:
        return Decision(new_decision_id(), exc), inp
    except Exception:
        decision_id = new_decision_id()
        log.exception("internal error in Check (decision %s)", decision_id)
        return Decision(decision_id, Unavailable("internal_error", "internal error; see the service log")), inp


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Envoy's ext_authz v3 Check. A deny is an answer (status in the response), not an RPC error."""

    def __init__(
        self,
        authorizer: Decider,
        *,
        check_timeout: float,
        retry_after: int,
        outages_as_errors: bool = True,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._audit = audit or AuditLog()
        self._metrics = metrics
        self._check_timeout = check_timeout
        self._retry_after = retry_after
        self._outages_as_errors = outages_as_errors
        self._tracing = tracing

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> CheckResponse:
        if self._tracing is not None:
            return await self._traced_check(self._tracing, request, context)
        start = time.perf_counter()
        decision, inp, response = await self._answer(request, context)
        self._record(decision, inp, start)
        return response

    async def _traced_check(
        self, tracing: Tracing, request: CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> CheckResponse:
        """:meth:`Check` inside its span (a separate path, so that with tracing off a Check pays nothing)."""
        start = time.perf_counter()
        with tracing.check_span(tracing.parent(context.invocation_metadata(), request)) as span:
            decision, inp, response = await self._answer(request, context)
            trace = tracing.finish(span, decision, inp)
        self._record(decision, inp, start, trace)
        return response

    async def _answer(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Decision, CheckInput | None, CheckResponse]:
        deadline = Deadline.for_call(context.time_remaining(), self._check_timeout)
        decision, inp = await run_check(self._authorizer, request, deadline)
        response = to_check_response(
            decision, inp, retry_after=self._retry_after, outages_as_errors=self._outages_as_errors
        )
        return decision, inp, response

    def _record(
        self, decision: Decision, inp: CheckInput | None, start: float, trace: tuple[str, str] | None = None
    ) -> None:
        elapsed = time.perf_counter() - start
        self._audit(decision, inp, elapsed_ms=elapsed * 1000, trace=trace)
        if self._metrics is not None:
            self._metrics.observe(decision, elapsed)
