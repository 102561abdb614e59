"""``server.workers: N``: N processes serve the ext_authz listener, so one host uses all its cores.

The supervisor (the process ``gerrit-authz serve`` started) does no Checks. It

- reserves the listeners' ports (port 0 picks one) and starts N workers, each ``gerrit-authz serve`` again with the
  same file, told by the environment which worker it is. Every worker binds the same ports with ``SO_REUSEPORT``:
  the kernel spreads connections (Envoy's few long-lived HTTP/2 connections, each a stream of Checks) over the
  workers. Measured against N addresses behind Envoy's ``LEAST_REQUEST``: see BENCHMARKS.md;
- creates the generation table in a shared file (:class:`~._generations.SharedGenerations`) that every worker's
  memory store reads: an Admin ``Invalidate`` answered by any worker, an event or a reload's new epoch bumps it once
  and every worker's next read sees it (Redis shares its table anyway);
- lets worker 0 alone follow ``gerrit.events`` (one stream per host), and serves ``server.metrics_listen`` itself,
  summing the workers' metrics (prometheus_client's multiprocess mode);
- forwards SIGHUP (each worker also watches the file, as one process does), and on SIGTERM/SIGINT sends SIGTERM to
  every worker (each turns NOT_SERVING and drains), waits for them, and exits 0;
- exits non-zero, after stopping the others, when a worker dies: a host serving with fewer workers than
  configured, or without the one following events, is better restarted whole by its supervisor (systemd,
  Kubernetes) than left limping.

Workers ask the kernel for SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so none is ever orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from ._generations import SharedGenerations
from .config import Config

__all__ = ["WORKER_LISTENING", "WORKER_READY", "WorkerRole", "die_with_parent", "supervise", "worker_role"]

log = logging.getLogger("gerrit_authz.workers")

_WORKER = "GERRIT_AUTHZ_WORKER"
_TABLE = "GERRIT_AUTHZ_GENERATIONS_FILE"
_LISTEN = "GERRIT_AUTHZ_WORKER_LISTEN"
_ADMIN = "GERRIT_AUTHZ_WORKER_ADMIN_LISTEN"
_OWN = "GERRIT_AUTHZ_WORKER_OWN_LISTEN"
#: What a worker prints once all its listeners are up.
WORKER_READY = "gerrit-authz: worker ready"
#: How a worker announces its own address (``server.worker_port_base``).
WORKER_LISTENING = "gerrit-authz: worker "
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor told this process: its index, the shared table and the reserved addresses."""

    index: int
    table: str
    listen: str
    admin_listen: str | None
    own_listen: str | None = None  # this worker's own ext_authz address (server.worker_port_base)

    def apply(self, config: Config) -> Config:
        """``config`` with the listeners the supervisor reserved (port 0 resolved once for every worker)."""
        update = {"listen": self.listen, "admin_listen": self.admin_listen}
        return config.model_copy(update={"server": config.server.model_copy(update=update)})


def worker_role() -> WorkerRole | None:
    """This process's role when a supervisor started it, else None."""
    index = os.environ.get(_WORKER)
    if index is None:
        return None
    return WorkerRole(
        int(index),
        os.environ[_TABLE],
        os.environ[_LISTEN],
        os.environ.get(_ADMIN) or None,
        os.environ.get(_OWN) or None,
    )


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux), so no worker outlives the supervisor. Safe as a
    ``preexec_fn``: it imports nothing after a fork."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reserve(listen: str, held: list[socket.socket]) -> str:
    """Bind ``listen`` (SO_REUSEPORT, not listening: it gets no connection) and keep it: the port is the workers'."""
    host, _, port = listen.rpartition(":")
    found = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    held.append(sock)
    return f"{host}:{sock.getsockname()[1]}"


async def _forward(stream: asyncio.StreamReader) -> None:
    """A worker's stdout after it is ready (its own "stopped" is the supervisor's to print)."""
    while line := await stream.readline():
        if not line.startswith(b"gerrit-authz: stopped"):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def _table_dir() -> str:
    """A private directory for the table and the metrics files: in memory (tmpfs) where there is one."""
    return tempfile.mkdtemp(prefix="gerrit-authz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


async def supervise(config: Config, config_path: str) -> int:
    """Run ``config.server.workers`` workers until SIGTERM/SIGINT; the exit status (0 after a clean drain)."""
    cfg = config.server
    base = _table_dir()
    held: list[socket.socket] = []
    workers: list[asyncio.subprocess.Process] = []
    try:
        table = os.path.join(base, "generations")
        SharedGenerations.create(table).close()
        metrics_dir = os.path.join(base, "metrics")
        os.mkdir(metrics_dir)
        env = {
            **os.environ,
            _TABLE: table,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            _LISTEN: _reserve(cfg.listen, held),
        }
        if cfg.admin_listen is not None:
            env[_ADMIN] = _reserve(cfg.admin_listen, held)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        command = [sys.executable, "-m", "authz_server", "serve", "--config", config_path, "--log-level", level]
        for i in range(cfg.workers):
            worker_env = {**env, _WORKER: str(i)}
            if cfg.worker_port_base is not None:
                port = cfg.worker_port_base + i if cfg.worker_port_base else 0
                worker_env[_OWN] = f"{cfg.listen.rpartition(':')[0]}:{port}"
            workers.append(
                await asyncio.create_subprocess_exec(*command, env=worker_env, stdout=asyncio.subprocess.PIPE)
            )
        return await _run(config, workers, metrics_dir)
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for sock in held:
            sock.close()
        shutil.rmtree(base, ignore_errors=True)


async def _ready(workers: list[asyncio.subprocess.Process]) -> list[str] | None:
    """The lines to print once every worker is ready: worker 0's addresses, and each worker's own address (with
    ``server.worker_port_base``); None when a worker failed to start."""

    async def first_lines(proc: asyncio.subprocess.Process) -> list[str] | None:
        assert proc.stdout is not None
        lines: list[str] = []
        while line := (await proc.stdout.readline()).decode():
            if line.startswith(WORKER_READY):
                return lines
            lines.append(line)
        return None

    try:
        async with asyncio.timeout(_START_TIMEOUT):
            found = await asyncio.gather(*(first_lines(p) for p in workers))
    except TimeoutError:
        return None
    if any(f is None for f in found):
        return None
    own = [line for lines in found[1:] if lines is not None for line in lines if line.startswith(WORKER_LISTENING)]
    return [*(found[0] or []), *own]


async def _run(config: Config, workers: list[asyncio.subprocess.Process], metrics_dir: str) -> int:
    cfg = config.server
    lines = await _ready(workers)
    if lines is None:
        # Workers load what only serving reads (certificates, trust files); one refusing it exits 2, as serve does.
        waits = [asyncio.create_task(p.wait()) for p in workers]
        await asyncio.wait(waits, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        log.error("a worker failed to start; stopping")
        return 2 if any(p.returncode == 2 for p in workers) else 1
    for line in lines:
        print(line.rstrip("\n"), flush=True)
    forwards = [asyncio.create_task(_forward(p.stdout)) for p in workers if p.stdout is not None]
    metrics = _serve_metrics(cfg.metrics_listen, metrics_dir) if cfg.metrics_listen is not None else None
    if metrics is not None:
        print(f"gerrit-authz: metrics on http://{_host(cfg.metrics_listen)}:{metrics.server_port}/metrics", flush=True)
    print(f"gerrit-authz: {len(workers)} workers ({', '.join(str(p.pid) for p in workers)})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _forward_signal, workers, signal.SIGHUP)
    stopping = asyncio.create_task(stop.wait())
    exits = [asyncio.create_task(p.wait()) for p in workers]
    await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if not stop.is_set():
        index, died = next((i, p) for i, p in enumerate(workers) if p.returncode is not None)
        log.error("worker %d (pid %d) exited with status %s; stopping every worker", index, died.pid, died.returncode)
        status = 1
    for proc in workers:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(cfg.shutdown_grace + 10.0):
            codes = await asyncio.gather(*exits)
    except TimeoutError:
        log.error("workers did not stop within the grace period; killing them")
        status = 1
    else:
        status = status or (0 if all(c == 0 for c in codes) else 1)
    for task in forwards:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 1.0)
    stopping.cancel()
    if metrics is not None:
        metrics.shutdown()
        metrics.server_close()
    print("gerrit-authz: stopped", flush=True)
    return status


def _forward_signal(workers: list[asyncio.subprocess.Process], sig: int) -> None:
    for proc in workers:
        if proc.returncode is None:
            proc.send_signal(sig)


def _host(listen: str | None) -> str:
    return (listen or "").rpartition(":")[0]


def _serve_metrics(listen: str, metrics_dir: str) -> WSGIServer:
    """``/metrics`` summing every worker's (prometheus_client multiprocess mode), in a daemon thread."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
