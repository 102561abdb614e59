"""The gRPC servers: ext_authz + health + reflection on ``listen``, Admin on ``admin_listen``.

Lifecycle as in grpc's asyncio examples: :func:`build_server` only builds; :meth:`AuthzServer.start` binds;
on SIGTERM health turns NOT_SERVING first, then ``server.stop(grace)`` lets in-flight Checks finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ._admin import AdminServicer
from ._app import Components, build_components
from ._audit import AuditLog, stderr_audit_log
from ._caller_trust import plaintext_exposed
from ._callers import AllowedCallers
from ._events import EventFollower
from ._generations import share_generations
from ._metrics import Metrics, StreamMetrics
from ._opstats import ReloadStats
from ._reload import LiveRuntime, Reloader
from ._servicer import AuthorizationServicer
from ._telemetry_config import telemetry_settings
from ._tls import CertificateFiles
from ._workers import WORKER_LISTENING, WORKER_READY, die_with_parent, supervise, worker_role
from .config import Config, TlsConfig

if TYPE_CHECKING:
    from ._telemetry import Tracing

__all__ = ["AuthzServer", "build_server", "make_tracing", "serve", "tune_gc", "warn_if_exposed"]

log = logging.getLogger("gerrit_authz.server")
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]
# The workers of server.workers share their listeners' ports (the kernel spreads the connections).
_WORKER_OPTIONS = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]


def _host(listen: str) -> str:
    return listen.rpartition(":")[0]


def _bind(server: grpc.aio.Server, listen: str, tls: CertificateFiles | None = None) -> str:
    """Bind ``HOST:PORT`` (port 0 picks one), over TLS when ``tls`` is given; returns the bound address."""
    port = server.add_insecure_port(listen) if tls is None else server.add_secure_port(listen, tls.credentials())
    if port == 0:
        raise OSError(f"cannot bind {listen}")
    return f"{_host(listen)}:{port}"


@dataclass
class AuthzServer:
    """Both servers and what they serve; ``address``/``admin_address`` are known after :meth:`start`."""

    components: Components
    server: grpc.aio.Server
    admin: grpc.aio.Server | None
    health: health_aio.HealthServicer
    metrics: Metrics | None = None
    address: str = ""
    admin_address: str = ""
    metrics_address: str = ""
    events: EventFollower | None = None
    runtime: LiveRuntime | None = None  # the swappable components; ``components`` is what it started with
    reloads: ReloadStats | None = None
    tls: CertificateFiles | None = None  # the Check listener's certificate files (re-read when they change)
    admin_tls: CertificateFiles | None = None
    serve_metrics: bool = True  # False in a worker: the supervisor serves every worker's metrics
    own_listen: str | None = None  # a worker's own ext_authz address (server.worker_port_base)
    own_address: str = ""

    async def start(self) -> None:
        cfg = self.components.config.server
        self.address = _bind(self.server, cfg.listen, self.tls)
        if self.own_listen is not None:  # the same servicers and TLS, on an address of this worker alone
            self.own_address = _bind(self.server, self.own_listen, self.tls)
        warn_if_exposed(self.components.config)
        if self.admin is not None and cfg.admin_listen is not None:
            self.admin_address = _bind(self.admin, cfg.admin_listen, self.admin_tls)
            await self.admin.start()
        if self.metrics is not None and cfg.metrics_listen is not None and self.serve_metrics:
            self.metrics_address = f"{_host(cfg.metrics_listen)}:{self.metrics.serve(cfg.metrics_listen)}"
        await self.server.start()
        for service in ("", AUTHZ_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.events is not None:
            self.events.start()  # in the background: decisions never wait for the stream

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so balancers move away), then drain in-flight Checks for ``grace`` seconds."""
        grace = self.components.config.server.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        stops = [self.server.stop(grace)]
        if self.admin is not None:
            stops.append(self.admin.stop(grace))
        await asyncio.gather(*stops)
        if self.events is not None:
            await self.events.stop()
        if self.metrics is not None:
            self.metrics.close()
        await (self.runtime or self.components).aclose()
        if self.components.tracing is not None:
            # Export what is still buffered; in a thread, as the export blocks (the collector may share this loop).
            await asyncio.to_thread(self.components.tracing.shutdown)


def warn_if_exposed(config: Config) -> bool:
    """Log (and return True) when the Check listener is plaintext off loopback with no mesh vouching for callers."""
    if not plaintext_exposed(config):
        return False
    log.warning(
        "server.listen %s is plaintext and not loopback: any client that reaches it can call Check; "
        "set server.tls (with client_ca_file) or server.caller_authentication: mesh",
        config.server.listen,
    )
    return True


def build_server(
    config: Config,
    components: Components | None = None,
    *,
    audit: AuditLog | None = None,
    worker: int | None = None,
) -> AuthzServer:
    """Build (not start) the servers for ``config``. Audit lines go to ``audit`` (default: the audit logger).

    ``worker``: this process is that worker of ``server.workers`` (listeners shared with SO_REUSEPORT, metrics
    served by the supervisor, the event stream followed by worker 0 only)."""
    options = _OPTIONS if worker is None else _WORKER_OPTIONS
    components = components or build_components(config, tracing=make_tracing(config))
    audit = audit or AuditLog()
    cfg = config.server
    # Old components are closed (when a reload cannot share them) after the longest a Check may take.
    runtime = LiveRuntime(components, retire_after=cfg.check_timeout + cfg.shutdown_grace + 1.0)
    reloads = ReloadStats(successes=0, failures=0, last_success=time.time())
    metrics = Metrics() if config.server.metrics_listen else None
    if metrics is not None:
        metrics.track_operations(components.stats, reloads)
    retry_after = max(1, round(cfg.retry_after))
    # Certificates are read now: an unreadable or mismatched pair fails the start, naming its key.
    tls = CertificateFiles(cfg.tls, "server.tls") if cfg.tls is not None else None
    admin_tls = CertificateFiles(cfg.admin_tls, "server.admin_tls") if cfg.admin_tls is not None else None
    server = grpc.aio.server(options=options, interceptors=_interceptors(cfg.tls))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(
            runtime,
            check_timeout=cfg.check_timeout,
            retry_after=retry_after,
            outages_as_errors=cfg.outages == "error",
            audit=audit,
            metrics=metrics,
            tracing=components.tracing,
        ),
        server,
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (
                AUTHZ_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    admin = None
    if cfg.admin_listen is not None:
        admin = grpc.aio.server(options=options, interceptors=_interceptors(cfg.admin_tls))
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                runtime,
                runtime,
                check_timeout=cfg.check_timeout,
                retry_after=retry_after,
                outages_as_errors=cfg.outages == "error",
                audit=audit,
            ),
            admin,
        )
        if cfg.reflection:
            reflection.enable_server_reflection((ADMIN_SERVICE, reflection.SERVICE_NAME), admin)
    events = None
    if config.gerrit.events is not None and not worker:  # one stream per host: worker 0's
        observer = StreamMetrics(metrics.registry) if metrics is not None else None
        # Through the runtime: after a reload the events reach the cache that Checks use now.
        events = EventFollower(config.gerrit.events, runtime, observer=observer)
    return AuthzServer(
        components,
        server,
        admin,
        health,
        metrics,
        runtime=runtime,
        reloads=reloads,
        events=events,
        tls=tls,
        admin_tls=admin_tls,
        serve_metrics=worker is None,
    )


def _interceptors(tls: TlsConfig | None) -> list[grpc.aio.ServerInterceptor]:
    if tls is None or tls.allowed_callers is None:
        return []
    return [AllowedCallers(tls.allowed_callers)]


def make_tracing(config: Config) -> Tracing | None:
    """The process's tracer when ``telemetry:`` or the ``OTEL_*`` variables turn tracing on, else None (and then
    nothing of OpenTelemetry is even imported)."""
    settings = telemetry_settings(config.telemetry)
    if settings is None:
        return None
    from ._telemetry import start_tracing

    return start_tracing(settings)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server with a large cache.

    Everything built at start-up (config, policy, protobuf descriptors) is frozen out of the collector's view, and
    the young-generation threshold is raised: each Check allocates many short-lived objects, and with the
    defaults the full collections that walk every cached entry dominate the Check's CPU time.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(config: Config, *, ready: asyncio.Event | None = None, config_path: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit status. With ``config_path``, reload it on
    SIGHUP and when it changes. With ``server.workers`` > 1 this process supervises that many workers, each of
    them ``serve`` again (see :mod:`._workers`)."""
    role = worker_role()
    if role is None and config.server.workers > 1:
        if config_path is None:
            raise ValueError("server.workers > 1 needs the configuration file (each worker reads it)")
        return await supervise(config, config_path)
    if role is not None:
        die_with_parent()
        share_generations(role.table)
        config = role.apply(config)
    audit = stderr_audit_log()
    app = build_server(config, audit=audit, worker=None if role is None else role.index)
    if role is not None:
        app.own_listen = role.own_listen
    reloader = None
    if config_path is not None and app.runtime is not None and app.reloads is not None:
        # Before the addresses are printed: a change made as soon as we are up is never missed.
        reloader = Reloader(config_path, app.runtime, app.reloads, interval=config.server.config_watch_interval)
        reloader.start()
    await app.start()
    tune_gc()
    print(f"gerrit-authz: ext_authz gRPC listening on {app.address}", flush=True)
    if app.admin_address:
        print(f"gerrit-authz: admin gRPC listening on {app.admin_address}", flush=True)
    if app.metrics_address:
        print(f"gerrit-authz: metrics on http://{app.metrics_address}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    if role is not None:
        if app.own_address:
            print(f"{WORKER_LISTENING}{role.index} ext_authz gRPC listening on {app.own_address}", flush=True)
        print(WORKER_READY, flush=True)  # to the supervisor, which prints the addresses once
    flusher = asyncio.create_task(_flush_every(audit, 0.2))
    await stop.wait()
    if reloader is not None:
        await reloader.stop()
    log.info("shutting down: health NOT_SERVING, draining for %.1fs", config.server.shutdown_grace)
    await app.stop()
    flusher.cancel()
    audit.flush()
    with contextlib.suppress(BrokenPipeError):  # a worker whose supervisor was killed is stopping anyway
        print("gerrit-authz: stopped", flush=True)
    return 0


async def _flush_every(audit: AuditLog, seconds: float) -> None:
    """The audit writer is buffered: push its lines out a few times a second."""
    while True:
        await asyncio.sleep(seconds)
        audit.flush()
