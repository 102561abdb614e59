"""Server CPU per warm Check over TLS and mTLS (one long-lived connection, as Envoy keeps) against plaintext.

Three gerrit-authz servers (bench/servers.py serve-authz, warm cache, 1 h TTLs, the Gerrit double) are started:
plaintext, TLS, and mTLS with ``allowed_callers`` (the interceptor reading the peer's SANs on every Check). One
grpc.aio channel per server (a single HTTP/2 connection) sends the same warm JWT Check, ``--concurrency`` at a
time; server utime+stime over the run / Checks is the figure. Rounds alternate between the servers; medians are
reported. Writes bench/tls_results.json.

    python bench/tls_overhead.py             # --checks N per round, --rounds R
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import grpc  # noqa: E402
from _support.tls import TestCA  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from run import Server, check_request  # noqa: E402

CALLER = "spiffe://bench.example/ns/edge/sa/envoy"


async def drive(address: str, credentials: grpc.ChannelCredentials | None, jwt: str, n: int, concurrency: int) -> int:
    request = check_request("Bearer " + jwt)
    channel = (
        grpc.aio.insecure_channel(address) if credentials is None else grpc.aio.secure_channel(address, credentials)
    )
    ok = 0
    async with channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        remaining = n

        async def worker() -> None:
            nonlocal remaining, ok
            while remaining > 0:
                remaining -= 1
                resp = await stub.Check(request, timeout=10)
                ok += resp.status.code == 0

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    (BENCH / ".work").mkdir(exist_ok=True)
    # The servers import this checkout's authz_server (not whichever one is installed).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))
    pki = TestCA(Path(tempfile.mkdtemp(prefix="bench-tls-")))
    server_cert, client = pki.issue("authz", server=True), pki.issue("envoy", uri=CALLER)
    tls = {"cert_file": str(server_cert.cert), "key_file": str(server_cert.key)}
    mtls = {**tls, "client_ca_file": str(pki.cert), "allowed_callers": [CALLER]}
    root = pki.cert.read_bytes()
    modes: dict[str, tuple[list[str], grpc.ChannelCredentials | None]] = {
        "plaintext": ([], None),
        "tls": (["--tls", json.dumps(tls)], grpc.ssl_channel_credentials(root)),
        "mtls_allowed_callers": (
            ["--tls", json.dumps(mtls)],
            grpc.ssl_channel_credentials(root, client.key.read_bytes(), client.cert.read_bytes()),
        ),
    }
    servers: dict[str, Server] = {}
    try:
        for name, (extra, _) in modes.items():
            servers[name] = Server(f"tls-{name}", ["serve-authz", "0", "--long-ttl", *extra])
    except SystemExit:  # one did not start: stop the others before leaving
        for server in servers.values():
            server.stop()
        raise
    results: dict[str, list[float]] = {name: [] for name in modes}
    wall: dict[str, list[float]] = {name: [] for name in modes}
    try:
        for name, server in servers.items():  # warm-up: fills the cache and the claims cache
            asyncio.run(drive(server.address, modes[name][1], server.ready["jwt"], 500, args.concurrency))
        for _ in range(args.rounds):
            for name, server in servers.items():
                cpu0, t0 = server.cpu_seconds(), time.perf_counter()
                ok = asyncio.run(
                    drive(server.address, modes[name][1], server.ready["jwt"], args.checks, args.concurrency)
                )
                cpu, elapsed = server.cpu_seconds() - cpu0, time.perf_counter() - t0
                assert ok == args.checks, (name, ok)
                results[name].append(cpu / args.checks * 1e6)
                wall[name].append(args.checks / elapsed)
    finally:
        for server in servers.values():
            server.stop()
    summary: dict[str, Any] = {}
    base = statistics.median(results["plaintext"])
    for name in modes:
        cpu_us = statistics.median(results[name])
        summary[name] = {
            "server_cpu_us_per_check": round(cpu_us, 1),
            "ratio_to_plaintext": round(cpu_us / base, 3),
            "checks_per_s": round(statistics.median(wall[name])),
            "rounds_cpu_us": [round(x, 1) for x in results[name]],
        }
    summary["settings"] = {"checks": args.checks, "rounds": args.rounds, "concurrency": args.concurrency}
    (BENCH / "tls_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
