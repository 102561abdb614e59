"""The app's current OpenTelemetry trace context, for the Check's gRPC metadata.

gerrit-authz parents its Check span on the ``traceparent`` of the gRPC metadata, as Envoy sends it; the middleware
sends the app's current span the same way, so a trace holds the app's request, the Check and its Gerrit lookups.
Only when ``opentelemetry`` is importable, and only W3C ``traceparent``/``tracestate`` (never baggage: it would
carry the app's own data to another service). Without a current valid span nothing is built per request.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["trace_metadata"]

Metadata = tuple[tuple[str, str], ...]


def _no_context() -> Metadata | None:
    return None


def _make() -> Callable[[], Metadata | None]:
    try:
        from opentelemetry.trace import get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return _no_context
    propagator = TraceContextTextMapPropagator()

    def trace_metadata() -> Metadata | None:
        if not get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        return tuple(carrier.items()) or None

    return trace_metadata


#: ``trace_metadata()``: the gRPC metadata carrying the current trace context, or None.
trace_metadata = _make()
