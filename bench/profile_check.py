"""Where a warm Check spends its time, without gRPC in the way.

    /work/venv/bin/python bench/profile_check.py [--n 20000] [--jwt] [--top 30] [--grpc]

Builds gerrit-authz exactly as bench/servers.py does (example config, Gerrit double, warm cache), then calls
``AuthorizationServicer.Check`` directly N times: prints microseconds per Check for each stage (parse, decide,
response, audit) and a cProfile of the whole call. Audit lines go to /dev/null through the same handler setup as
``gerrit-authz serve``. With ``--grpc`` the server and a grpc.aio client run in this process instead, and the
profile covers the grpc.aio servicer path too (client included, so read it for relative weights only).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gerrit_double  # noqa: E402
import servers  # noqa: E402
from run import basic, check_request  # noqa: E402

from authz_server._app import build_components  # noqa: E402
from authz_server._audit import stderr_audit_log  # noqa: E402
from authz_server._deadline import Deadline  # noqa: E402
from authz_server._input import parse_check_request  # noqa: E402
from authz_server._response import to_check_response  # noqa: E402
from authz_server._servicer import AuthorizationServicer  # noqa: E402


class _Context:
    def time_remaining(self) -> float | None:
        return None


def _logging_to_devnull() -> None:
    from authz_server.cli import _setup_logging

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    saved, sys.stderr = sys.stderr, devnull
    try:
        _setup_logging("info")
    finally:
        sys.stderr = saved


# The server's own audit writer (buffered, as `serve` runs it), into /dev/null.
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process (its fd is written to below)
audit = stderr_audit_log(_DEVNULL)


async def _stages(components: Any, request: Any, n: int) -> dict[str, float]:
    authorizer = components.authorizer
    totals = {"parse": 0.0, "decide": 0.0, "response": 0.0, "audit": 0.0}
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        inp = parse_check_request(request)
        t1 = clock()
        decision = await authorizer.decide(inp, Deadline.after(1.0))
        t2 = clock()
        to_check_response(decision, inp)
        t3 = clock()
        audit(decision, inp, elapsed_ms=(t3 - t0) * 1000)
        t4 = clock()
        totals["parse"] += t1 - t0
        totals["decide"] += t2 - t1
        totals["response"] += t3 - t2
        totals["audit"] += t4 - t3
    return {k: v / n * 1e6 for k, v in totals.items()}


async def _direct(servicer: AuthorizationServicer, request: Any, n: int) -> float:
    ctx = _Context()
    t0 = time.perf_counter()
    for _ in range(n):
        response = await servicer.Check(request, ctx)
    assert response.status.code == 0, response
    return (time.perf_counter() - t0) / n * 1e6


async def _over_grpc(config: Any, components: Any, request: Any, n: int, profiler: cProfile.Profile) -> float:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from authz_server._server import build_server

    app = build_server(config, components)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)

            async def worker(count: int) -> None:
                for _ in range(count):
                    await stub.Check(request, timeout=5)

            await worker(200)
            profiler.enable()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(n // 16) for _ in range(16)))
            elapsed = time.perf_counter() - t0
            profiler.disable()
    finally:
        await app.stop(grace=0.5)
    return (n // 16 * 16) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--jwt", action="store_true", help="Bearer JWT instead of Basic")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--grpc", action="store_true", help="profile through an in-process grpc.aio server")
    parser.add_argument("--out", type=Path, help="also write the raw pstats here")
    args = parser.parse_args()

    _logging_to_devnull()
    key, jwk = servers._signing_key()
    config = servers.bench_config(0, long_ttl=True)
    double = gerrit_double.GerritDouble(jwk=jwk)
    components = build_components(config, transport=double.transport())
    auth = "Bearer " + servers._token(key, gerrit_double.user_email(0)) if args.jwt else basic(0)
    request = check_request(auth)
    cfg = config.server
    servicer = AuthorizationServicer(components.authorizer, check_timeout=cfg.check_timeout, retry_after=5, audit=audit)
    await _direct(servicer, request, 10)  # warm the cache (and the JWKS)
    requests_when_warm = sum(double.counts.values())

    profiler = cProfile.Profile()
    if args.grpc:
        rate = await _over_grpc(config, components, request, args.n, profiler)
        print(f"in-process grpc.aio (client and server in one loop): {rate:.0f} Check/s")
    else:
        stages = await _stages(components, request, args.n)
        per_check = await _direct(servicer, request, args.n)
        print(f"warm Check, {'JWT' if args.jwt else 'Basic'}, called directly: {per_check:.1f} us per Check")
        print("  stages (us): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        profiler.enable()
        await _direct(servicer, request, args.n)
        profiler.disable()
    assert sum(double.counts.values()) == requests_when_warm, "the warm path asked Gerrit"
    stats = pstats.Stats(profiler)
    if args.out:
        stats.dump_stats(args.out)
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    await components.aclose()


if __name__ == "__main__":
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.run(main())
