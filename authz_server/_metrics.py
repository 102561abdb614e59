"""Prometheus metrics for decisions, served on ``server.metrics_listen`` when it is set.

Everything is derived from the finished :class:`Decision` (its error code, rule and trace), so the Check path has
no metric calls of its own and label values are bounded by the configuration (rules, requirement kinds, codes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._engine import Decision
from ._opstats import ReloadStats, RotationStats
from .errors import status_for

__all__ = ["Metrics", "StreamMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Children:
    """A labelled metric's children, kept: ``labels()`` validates and locks on every call, and the Check path
    asks for the same few children each time (label values are bounded by the configuration)."""

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def __call__(self, *labels: str) -> Counter:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class Metrics:
    """One registry per instance, so several servers (or tests) in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http: WSGIServer | None = None
        self._decisions = _Children(
            Counter(
                "gerrit_authz_decisions",
                "Decisions by outcome, HTTP status, error code, rule and mode (enforce, or shadow: the real decision"
                " of a request that was let through).",
                ["allowed", "http_status", "code", "rule", "mode"],
                registry=self.registry,
            )
        )
        self._duration = Histogram(
            "gerrit_authz_check_duration_seconds",
            "Time to decide one Check, from request to response.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._memo_hits = _Children(
            Counter(
                "gerrit_authz_decision_memo_hits",
                "Checks answered from the decision memo (no identity check, no fact lookup), by rule.",
                ["rule"],
                registry=self.registry,
            )
        )
        self._lookups = _Children(
            Counter(
                "gerrit_authz_lookups",
                "Gerrit facts behind decisions, by requirement kind and where the answer came from.",
                ["kind", "source"],
                registry=self.registry,
            )
        )

    def observe(self, decision: Decision, seconds: float) -> None:
        error = decision.error
        self._decisions(
            "true" if error is None else "false",
            str(status_for(error).http),
            error.code if error else "",
            decision.rule,
            "shadow" if decision.shadow else "enforce",
        ).inc()
        self._duration.observe(seconds)
        if decision.memo:  # its lookups are counted as the cache hits a fresh decision would have made
            self._memo_hits(decision.rule).inc()
        for entry in decision.trace:
            if entry.source:
                self._lookups(entry.kind, entry.source).inc()

    def track_operations(self, rotation: RotationStats, reloads: ReloadStats) -> None:
        """Export the rotation and reload counters (read at scrape time)."""
        self.registry.register(_OperationsCollector(rotation, reloads))

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


class StreamMetrics:
    """The event stream's metrics (a :class:`authz_server._events.StreamObserver`), in a :class:`Metrics` registry."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self._connected = Gauge(
            "gerrit_authz_events_connected", "1 while gerrit stream-events is followed.", registry=registry
        )
        self._events = Counter(
            "gerrit_authz_events_received", "Gerrit stream events received, by type.", ["type"], registry=registry
        )
        self._invalidations = Counter(
            "gerrit_authz_events_invalidations",
            "Cache invalidations made for stream events, by kind.",
            ["kind"],
            registry=registry,
        )
        self._reconnects = Counter(
            "gerrit_authz_events_reconnects", "Attempts to reconnect to the event stream.", registry=registry
        )
        self._dropped = Counter(
            "gerrit_authz_events_dropped",
            "Stream events lost, each time followed by dropping every cached answer: by Gerrit for a slow reader"
            " (reason=gerrit, dropped-output) or discarded from a full backlog (reason=backlog).",
            ["reason"],
            registry=registry,
        )
        self._backlog = Gauge(
            "gerrit_authz_events_backlog", "Stream events read but not applied yet.", registry=registry
        )
        since = Gauge(
            "gerrit_authz_events_seconds_since_last_event",
            "Seconds since the last stream event (-1 before the first).",
            registry=registry,
        )
        since.set_function(lambda: -1.0 if self._last is None else self._clock() - self._last)

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)

    def event(self, kind: str) -> None:
        self._last = self._clock()
        # Types are Gerrit's fixed set plus plugins'; bounded in practice, and capped in length here.
        self._events.labels(kind[:64]).inc()

    def invalidation(self, kind: str) -> None:
        self._invalidations.labels(kind).inc()

    def reconnect(self) -> None:
        self._reconnects.inc()

    def dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(reason).inc(count)

    def backlog(self, size: int) -> None:
        self._backlog.set(size)


class _OperationsCollector(Collector):
    def __init__(self, rotation: RotationStats, reloads: ReloadStats) -> None:
        self._rotation = rotation
        self._reloads = reloads

    def collect(self) -> Iterator[Metric]:
        r = self._rotation
        yield CounterMetricFamily(
            "gerrit_authz_secret_rereads",
            "Service secrets read again (file changed, or refreshed on a 401).",
            r.rereads,
        )
        yield CounterMetricFamily(
            "gerrit_authz_secret_changes", "Service secret re-reads that found a new value.", r.changes
        )
        yield CounterMetricFamily(
            "gerrit_authz_gerrit_auth_retries",
            "Gerrit requests retried once after a 401, with the re-read service secret.",
            r.auth_retries,
        )
        reloads = CounterMetricFamily(
            "gerrit_authz_config_reloads", "Configuration reloads by result.", labels=["result"]
        )
        reloads.add_metric(["success"], self._reloads.successes)
        reloads.add_metric(["failure"], self._reloads.failures)
        yield reloads
        yield GaugeMetricFamily(
            "gerrit_authz_config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was applied.",
            self._reloads.last_success,
        )
