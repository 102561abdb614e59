"""Servers under test, each run in its own process by ``bench/run.py``.

    python bench/servers.py serve-noop PORT
        A no-op ``envoy.service.auth.v3.Authorization/Check`` on grpc.aio (plus health and reflection, like the
        real server) that answers a prebuilt OK CheckResponse: the ceiling for this stack.

    python bench/servers.py serve-authz PORT [--delay S] [--fill N] [--long-ttl]
        gerrit-authz built from the contract's example config (listen/TTLs adjusted) with the Gerrit double as
        the httpx transport. ``--fill N`` puts N realistic entries into the memory cache through the
        CachedGerrit API before serving. ``--delay`` makes the double answer after S seconds.

Each prints one JSON line on stdout when ready ({"port", "pid", ...}); serve-authz prints another on SIGTERM
with the double's request counts. Logging (including the JSON audit lines) goes to stderr as with
``gerrit-authz serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gerrit_double  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: E402
from google.rpc.status_pb2 import Status as RpcStatus  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_health.v1.health import aio as health_aio  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

EXAMPLE_CONFIG = Path(os.environ.get("BENCH_EXAMPLE_CONFIG", REPO / "examples" / "config.yaml"))


def rss_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# -- (a) the no-op server ------------------------------------------------------------------------------------


class NoopAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, response: Any = None) -> None:
        self._ok = response or external_auth_pb2.CheckResponse(
            status=RpcStatus(code=0), ok_response=external_auth_pb2.OkHttpResponse()
        )

    async def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:
        return self._ok


def _full_allow_response() -> Any:
    """The CheckResponse gerrit-authz sends for the benchmark's allow (headers and dynamic metadata)."""
    from authz_server._engine import Decision
    from authz_server._facts import Account
    from authz_server._identity import Identity, Principal
    from authz_server._response import to_check_response

    account = Account(gerrit_double.account_id(0), "alice", gerrit_double.user_email(0))
    identity = Identity(Principal("gerrit_http_credentials", "alice", account=account), account, "cache")
    decision = Decision("0123456789abcdef01234567", None, "read-artifacts", identity)
    return to_check_response(decision, None)


async def serve_noop(port: int, *, full_response: bool = False) -> None:
    from authz_server._server import _OPTIONS  # same channel options as the real server

    server = grpc.aio.server(options=_OPTIONS)
    response = _full_allow_response() if full_response else None
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(NoopAuthorization(response), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    authz_service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
    reflection.enable_server_reflection((authz_service, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    _emit({"port": bound, "pid": os.getpid(), "rss_kb": rss_kb()})
    await _wait_for_signal()
    await server.stop(0.5)


# -- (b)/(c) gerrit-authz ------------------------------------------------------------------------------------


def bench_config(port: int, *, long_ttl: bool, tls: dict[str, Any] | None = None) -> Any:
    """The example config, listening on ``port`` (no admin listener); with ``long_ttl`` entries outlive the run;
    ``tls`` is the ``server.tls`` block (see tls_overhead.py)."""
    from authz_server.config import parse_config

    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["server"].update({"listen": f"127.0.0.1:{port}", "admin_listen": None})
    if tls is not None:
        data["server"]["tls"] = tls
    if long_ttl:  # warm-cache runs: nothing may expire (and be refetched) in the middle of a measurement
        data["cache"]["ttl"] = {
            k: "1h" for k in ("account", "credentials", "groups", "capabilities", "access", "change")
        }
    os.environ[data["gerrit"]["password_env"]] = gerrit_double.SERVICE_PASSWORD
    return parse_config(data)


def _signing_key() -> tuple[Any, dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench-1", "alg": "RS256", "use": "sig"})
    return key, jwk


def _token(key: Any, email: str) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": gerrit_double.ISSUER,
        "aud": "gerrit-authz-demo",
        "sub": email.split("@")[0],
        "email": email,
        "iat": now,
        "exp": now + 6 * 3600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-1"})


async def fill_cache(cache: Any, store: Any, n: int) -> dict[str, Any]:
    """At least ``n`` realistic entries through the CachedGerrit API. Per user: the verified credential, the
    account by email, groups, capabilities, and 16 check.access answers (8 projects x 2 branches), plus whatever
    index entries the cache keeps beside them. Every lookup goes through the Gerrit double over httpx."""
    from authz_server._accounts import account_key
    from authz_server._deadline import Deadline

    projects = [f"platform/{name}" for name in ("build", "tools", "kernel", "ui", "docs", "infra", "sdk", "ci")]
    branches = ["main", "release-1.4"]

    async def one_user(i: int) -> None:
        deadline = Deadline.after(60.0)
        name, password = gerrit_double.user_name(i), gerrit_double.user_password(i)
        account = (await cache.verify_credentials(name, password, deadline)).value
        await cache.account(account_key("email", gerrit_double.user_email(i)), deadline)
        await asyncio.gather(cache.groups(account.id, deadline), cache.capabilities(account.id, deadline))
        await asyncio.gather(
            *(
                cache.check_access(p, account.id, f"refs/heads/{b}", "read", deadline)
                for p in projects
                for b in branches
            )
        )

    users, batch = 0, 50
    while len(store) < n:
        await asyncio.gather(*(one_user(i) for i in range(users, users + batch)))
        users += batch
    kinds: dict[str, int] = {}
    for key in store.held():
        kind = key.split("|", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"users": users, "entries": len(store), "by_kind": kinds}


async def serve_authz(
    port: int,
    *,
    delay: float,
    fill: int,
    long_ttl: bool,
    audit: bool = True,
    profile: str | None = None,
    tls: dict[str, Any] | None = None,
) -> None:
    from authz_server._app import build_components
    from authz_server._audit import AuditLog, stderr_audit_log
    from authz_server._server import build_server, tune_gc
    from authz_server.cli import _setup_logging

    _setup_logging("info")
    # As `gerrit-authz serve`: JSON audit lines to a buffered stderr (or, for diagnosis only, nowhere).
    audit_log = stderr_audit_log() if audit else AuditLog(lambda line: None)
    key, jwk = _signing_key()
    config = bench_config(port, long_ttl=long_ttl, tls=tls)
    double = gerrit_double.GerritDouble(delay=0.0, jwk=jwk)
    components = build_components(config, transport=double.transport())
    app = build_server(config, components, audit=audit_log)
    tune_gc()  # as `gerrit-authz serve` does at start, before the cache fills
    info: dict[str, Any] = {"pid": os.getpid()}
    gc.collect()
    info["rss_kb_before_fill"] = rss_kb()
    if fill:
        started = time.perf_counter()
        httpx_log = logging.getLogger("httpx")
        httpx_log.setLevel(logging.WARNING)  # one INFO line per Gerrit request: not part of the fill's cost
        info["fill"] = await fill_cache(components.cache, components.store, fill)
        httpx_log.setLevel(logging.NOTSET)
        info["fill_seconds"] = round(time.perf_counter() - started, 2)
        info["fill_gerrit_requests"] = sum(double.counts.values())
        gc.collect()
        info["rss_kb_after_fill"] = rss_kb()
    info["cache_entries"] = len(components.store) if hasattr(components.store, "__len__") else None
    double.reset()
    double.delay = delay
    await app.start()
    info["port"] = int(app.address.rpartition(":")[2])
    info["jwt"] = _token(key, gerrit_double.user_email(0))
    _emit(info)
    profiler = None
    if profile:  # cProfile of everything the server's thread runs while serving (SIGUSR1 starts it)
        import cProfile

        profiler = cProfile.Profile()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, profiler.enable)
    await _wait_for_signal()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    final = {
        "gerrit_requests": dict(double.counts),
        "rss_kb": rss_kb(),
        "cache_entries": len(components.store) if hasattr(components.store, "__len__") else None,
    }
    await app.stop(grace=0.5)
    _emit(final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    noop = sub.add_parser("serve-noop")
    noop.add_argument("port", type=int)
    noop.add_argument("--full-response", action="store_true", help="diagnosis: answer gerrit-authz's allow")
    authz = sub.add_parser("serve-authz")
    authz.add_argument("port", type=int)
    authz.add_argument("--delay", type=float, default=0.0, help="Gerrit double answers after this many seconds")
    authz.add_argument("--fill", type=int, default=0, help="cache entries to add before serving")
    authz.add_argument("--long-ttl", action="store_true", help="1h TTLs so a warm cache stays warm")
    authz.add_argument("--no-audit", action="store_true", help="diagnosis only: no audit lines")
    authz.add_argument("--profile", metavar="FILE", help="cProfile from SIGUSR1 until SIGTERM, written to FILE")
    authz.add_argument("--tls", metavar="JSON", help="server.tls block as JSON (TLS listener)")
    args = parser.parse_args()
    if args.cmd == "serve-noop":
        asyncio.run(serve_noop(args.port, full_response=args.full_response))
    else:
        asyncio.run(
            serve_authz(
                args.port,
                delay=args.delay,
                fill=args.fill,
                long_ttl=args.long_ttl,
                audit=not args.no_audit,
                profile=args.profile,
                tls=json.loads(args.tls) if args.tls else None,
            )
        )


if __name__ == "__main__":
    main()
