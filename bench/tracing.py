"""What tracing costs a warm Check: server CPU per Check, through real gRPC, in five variants.

    python bench/tracing.py [--n 6000] [--rounds 3] [--base PATH]

Each variant is a server process built like ``bench/servers.py serve-authz`` (example config, Gerrit double, 1 h
TTLs, audit lines to /dev/null through the server's own buffered writer), warmed, then sent ``--n`` Checks by 16
concurrent callers on one grpc.aio channel, each carrying a ``traceparent`` in its gRPC metadata as Envoy sends
it. Server CPU per Check is the server process's utime+stime over the measured Checks divided by their number
(export threads included). Variants alternate ``--rounds`` times; medians are reported.

- ``base``: the code before tracing existed (``--base`` is a checkout of it, e.g. ``git archive <commit>``)
- ``off``: this code, tracing off (the default)
- ``on``: hand-made spans (Check, identity), batch-exported over OTLP/gRPC to a receiver in another process
- ``on-noexport``: the same spans, handed to a batch processor whose exporter drops them (span cost alone)
- ``interceptor``: instead of the hand-made Check span, opentelemetry-instrumentation-grpc's aio server
  interceptor (its SERVER span per RPC, parent from the metadata), exported like ``on``

``python bench/tracing.py direct off|on-noexport --n 20000`` calls the servicer in-process instead (no gRPC).

Cold lookups: ``--httpx`` also times one Gerrit request through the hand-made CLIENT-span transport and through
opentelemetry-instrumentation-httpx on the same client (in-process, MockTransport, microseconds per request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VARIANTS = ("base", "off", "on", "on-noexport", "interceptor")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server process --------------------------------------------------------------------------------------


class _Drop:
    """A SpanExporter that drops everything (the span cost without serialization or network)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _provider(variant: str, otlp: str) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    if variant == "on-noexport":
        provider.add_span_processor(BatchSpanProcessor(_Drop()))  # type: ignore[arg-type]
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://{otlp}")))
    return provider


async def _serve(variant: str, otlp: str) -> None:
    import grpc
    import servers
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from authz_server._app import build_components
    from authz_server._audit import stderr_audit_log
    from authz_server._server import _OPTIONS, tune_gc
    from authz_server._servicer import AuthorizationServicer

    config = servers.bench_config(0, long_ttl=True)
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - kept open while serving: the audit writer uses its fd
    audit = stderr_audit_log(devnull)
    _, jwk = servers._signing_key()
    double = servers.gerrit_double.GerritDouble(delay=0.0, jwk=jwk)
    kwargs: dict[str, Any] = {}
    interceptors: list[Any] = []
    if variant in ("on", "on-noexport"):
        from authz_server._telemetry import Tracing

        kwargs["tracing"] = Tracing(_provider(variant, otlp))
    elif variant == "interceptor":
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(tracer_provider=_provider(variant, otlp)))
    components = build_components(config, transport=double.transport(), **kwargs)
    server = grpc.aio.server(options=_OPTIONS, interceptors=interceptors)
    servicer = AuthorizationServicer(components.authorizer, check_timeout=1.0, retry_after=5, audit=audit, **kwargs)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tune_gc()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(0)
    if "tracing" in kwargs:
        kwargs["tracing"].shutdown()
    devnull.close()


async def _receive() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from _support.otlp import OtlpReceiver

    async with OtlpReceiver() as otlp:
        print(json.dumps({"address": otlp.address}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(json.dumps({"spans": len(otlp.spans)}), flush=True)


async def _direct(variant: str, n: int) -> float:
    """CPU per Check calling the servicer directly (no gRPC): the span cost alone, least noisy."""
    import servers
    from run import basic, check_request

    from authz_server._app import build_components
    from authz_server._audit import stderr_audit_log
    from authz_server._server import tune_gc
    from authz_server._servicer import AuthorizationServicer

    class Context:
        def time_remaining(self) -> float | None:
            return None

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("traceparent", TRACEPARENT),)

    config = servers.bench_config(0, long_ttl=True)
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - the audit writer uses its fd
    _, jwk = servers._signing_key()
    double = servers.gerrit_double.GerritDouble(delay=0.0, jwk=jwk)
    kwargs: dict[str, Any] = {}
    if variant == "on-noexport":
        from authz_server._telemetry import Tracing

        kwargs["tracing"] = Tracing(_provider(variant, ""))
    components = build_components(config, transport=double.transport(), **kwargs)
    servicer = AuthorizationServicer(
        components.authorizer, check_timeout=1.0, retry_after=5, audit=stderr_audit_log(devnull), **kwargs
    )
    request, context = check_request(basic(0)), Context()
    for _ in range(500):
        await servicer.Check(request, context)
    tune_gc()
    started = time.process_time()
    for _ in range(n):
        await servicer.Check(request, context)
    return (time.process_time() - started) / n * 1e6


# -- the load ------------------------------------------------------------------------------------------------


async def _load(address: str, n: int, concurrency: int = 16) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc
    from run import basic, check_request

    request = check_request(basic(0))
    metadata = (("traceparent", TRACEPARENT),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        left = n

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                resp = await stub.Check(request, metadata=metadata, timeout=10)
                assert resp.status.code == 0, resp

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__)), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def measure(variant: str, n: int, otlp: str, base: str) -> float:
    env = {**os.environ, "BENCH_REPO": base if variant == "base" else str(REPO)}
    proc, info = _start(["serve", variant, "--otlp", otlp], env)
    try:
        address = f"127.0.0.1:{info['port']}"
        asyncio.run(_load(address, 500))  # warm: cache filled, code paths hot
        before = _cpu_seconds(info["pid"])
        asyncio.run(_load(address, n))
        time.sleep(0.3)  # let a batch export of the last spans finish (counted: it is the server's cost)
        return (_cpu_seconds(info["pid"]) - before) / n * 1e6
    finally:
        _stop(proc)


async def _httpx_costs(n: int) -> dict[str, float]:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from authz_server._telemetry import Tracing

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=")]}'\n{}")

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop()))  # type: ignore[arg-type]
    out = {}
    for name in ("plain", "hand-made", "instrumentation-httpx"):
        client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        if name == "hand-made":
            Tracing(provider).instrument(client)
        elif name == "instrumentation-httpx":
            HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
        for _ in range(200):
            await client.get("http://gerrit.test/a/accounts/1/groups")
        started = time.process_time()
        for _ in range(n):
            await client.get("http://gerrit.test/a/accounts/1/groups")
        out[name] = (time.process_time() - started) / n * 1e6
        await client.aclose()
    provider.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve")
    serve.add_argument("variant", choices=VARIANTS)
    serve.add_argument("--otlp", default="")
    sub.add_parser("receive")
    direct = sub.add_parser("direct", help="no gRPC: call the servicer in this process (off, on-noexport)")
    direct.add_argument("variant", choices=("off", "on-noexport"))
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", default="", help="a checkout of the code before tracing (for variant base)")
    parser.add_argument("--httpx", action="store_true", help="also time one Gerrit request, hand-made vs httpx")
    args = parser.parse_args()
    sys.path.insert(0, os.environ.get("BENCH_REPO", str(REPO)))
    sys.path.insert(1, str(BENCH))
    if args.cmd == "serve":
        asyncio.run(_serve(args.variant, args.otlp))
        return
    if args.cmd == "direct":
        print(f"{args.variant}: {asyncio.run(_direct(args.variant, args.n)):.1f} µs CPU/Check (no gRPC)")
        return
    if args.cmd == "receive":
        asyncio.run(_receive())
        return
    variants = [v for v in VARIANTS if v != "base" or args.base]
    receiver, info = _start(["receive"], {**os.environ})
    results: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for _ in range(args.rounds):
            for variant in variants:
                results[variant].append(measure(variant, args.n, info["address"], args.base))
                print(f"{variant:12} {results[variant][-1]:8.1f} µs CPU/Check", file=sys.stderr, flush=True)
    finally:
        _stop(receiver)
        assert receiver.stdout is not None
        received = receiver.stdout.readline().strip()
    medians = {v: round(statistics.median(r), 1) for v, r in results.items()}
    report: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "cpu_us_per_check": results, "median": medians}
    report["received"] = json.loads(received) if received else None
    if args.httpx:
        report["httpx_cpu_us_per_request"] = {k: round(v, 1) for k, v in asyncio.run(_httpx_costs(3000)).items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
