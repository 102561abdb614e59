"""Prometheus metrics for decisions, served on ``server.metrics_listen`` when it is set.

Everything is derived from the finished :class:`Decision` (its error code, rule and trace), so the Check path has
no metric calls of its own and label values are bounded by the configuration (rules, requirement kinds, codes).
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from ._engine import Decision
from .errors import status_for

__all__ = ["Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """One registry per instance, so several servers (or tests) in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http: WSGIServer | None = None
        self._decisions = Counter(
            "gerrit_authz_decisions",
            "Decisions by outcome, HTTP status, error code and rule.",
            ["allowed", "http_status", "code", "rule"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "gerrit_authz_check_duration_seconds",
            "Time to decide one Check, from request to response.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._lookups = Counter(
            "gerrit_authz_lookups",
            "Gerrit facts behind decisions, by requirement kind and where the answer came from.",
            ["kind", "source"],
            registry=self.registry,
        )

    def observe(self, decision: Decision, seconds: float) -> None:
        error = decision.error
        self._decisions.labels(
            "true" if error is None else "false",
            str(status_for(error).http),
            error.code if error else "",
            decision.rule,
        ).inc()
        self._duration.observe(seconds)
        for entry in decision.trace:
            if entry.source:
                self._lookups.labels(entry.kind, entry.source).inc()

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` over HTTP on ``HOST:PORT`` (a daemon thread); returns the bound port."""
        host, _, port = address.rpartition(":")
        self._http, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
