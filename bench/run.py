"""Run the whole benchmark once: (a) no-op Check ceiling, (b) gerrit-authz warm cache, (c) cold lookups.

    /work/venv/bin/python bench/run.py [--reps 3] [--n 20000] [--fill 100000] [--quick]

Servers run in their own processes (bench/servers.py); the load generator is ghz (bench/.bin/ghz, installed with
``go install`` when missing) for (a)/(b), and a grpc.aio client in this process for the (c) bursts. Everything
talks to 127.0.0.1 only; every ghz run is bounded by a request count (-n) and a time cap (--cap, enforced as a
process timeout). Writes bench/results.json and prints a table (markdown with --markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import gerrit_double  # noqa: E402
import grpc  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest  # noqa: E402

from authz_server.checkrequest import build_check_request  # noqa: E402

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz@v0.93.0"
GHZ = BENCH / ".bin" / "ghz"
WORK = BENCH / ".work"
CALL = "envoy.service.auth.v3.Authorization.Check"
PATH = "/artifacts/platform%2Fbuild/-/main/out/app.tar"


# -- helpers ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_ghz() -> Path:
    if GHZ.exists():
        return GHZ
    go = shutil.which("go")
    if go is None:
        sys.exit(
            f"ghz is missing and there is no Go toolchain: install it with  GOBIN={GHZ.parent} go install {GHZ_MODULE}"
        )
    print(f"installing ghz into {GHZ.parent} ...", flush=True)
    subprocess.run([go, "install", GHZ_MODULE], check=True, env={**os.environ, "GOBIN": str(GHZ.parent)}, timeout=600)
    return GHZ


class Server:
    """One server process: started, waited for (its JSON ready line), stopped with SIGTERM."""

    def __init__(
        self, name: str, args: list[str], *, ready_timeout: float = 300.0, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = (WORK / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "servers.py"), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=REPO,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + ready_timeout
        line = ""
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.kill()
            sys.exit(f"{name} did not start; see {self.log.name}")
        self.ready: dict[str, Any] = json.loads(line)
        self.port = int(self.ready["port"])
        self.address = f"127.0.0.1:{self.port}"

    def rss(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        """utime + stime of the server process (all its threads), for CPU per Check."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.log.close()
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def basic(i: int) -> str:
    raw = f"{gerrit_double.user_name(i)}:{gerrit_double.user_password(i)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def check_request(authorization: str) -> CheckRequest:
    """The CheckRequest Envoy sends for ``GET /artifacts/platform%2Fbuild/-/main/out/app.tar``."""
    return build_check_request(
        "GET",
        PATH,
        host="artifacts.example.com",
        scheme="https",
        headers={
            "authorization": authorization,
            "user-agent": "curl/8.5.0",
            "accept": "*/*",
            "x-forwarded-proto": "https",
            "x-forwarded-for": "10.1.2.3",
            "x-envoy-expected-rq-timeout-ms": "15000",
        },
        request_id="5f0c6b2e-9a1d-4a3e-8f61-0d6b1a2c3e4f",
        source_address="10.1.2.3",
        source_port=51234,
    )


async def _one_check(address: str, request: CheckRequest) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        return await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def sanity(address: str, request: CheckRequest, *, authz: bool) -> None:
    """The load must measure allows: check one answer before measuring."""
    response = asyncio.run(_one_check(address, request))
    if response.status.code != 0:
        sys.exit(f"sanity check against {address} failed: {response}")
    if authz:
        headers = {h.header.key: h.header.value for h in response.ok_response.headers}
        if headers.get("x-authz-rule") != "read-artifacts" or headers.get("x-gerrit-username") != "alice":
            sys.exit(f"sanity check against {address}: unexpected allow {headers}")


def write_protoset(path: Path) -> Path:
    """A FileDescriptorSet for ghz, from the Python descriptors (ghz v0.93's reflection client cannot resolve
    Envoy's service; grpcurl can, so the server's reflection itself is fine)."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import descriptor_pb2

    files: list[Any] = []
    seen: set[str] = set()

    def add(fd: Any) -> None:  # dependencies first
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files.append(proto)

    add(external_auth_pb2.DESCRIPTOR)
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


def ghz(server: Server, data: Path, *, c: int, connections: int, n: int, cap: float, cpus: int) -> dict[str, Any]:
    cmd = [
        str(GHZ),
        "--insecure",
        "--protoset", str(WORK / "authz.protoset"),
        "--call", CALL,
        "-B", str(data),
        "-c", str(c),
        "--connections", str(connections),
        "-n", str(n),
        "-t", "5s",
        "--cpus", str(cpus),
        "-O", "json",
        server.address,
    ]  # fmt: skip
    cpu0 = server.cpu_seconds()
    # -n bounds the count; the time cap is enforced here (ghz's -x ignores -n and runs for the whole duration).
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    cpu = server.cpu_seconds() - cpu0
    if proc.returncode != 0:
        sys.exit(f"ghz failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
    report = json.loads(proc.stdout)
    dist = {int(d["percentage"]): d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    statuses = report.get("statusCodeDistribution") or {}
    return {
        "count": report["count"],
        "ok": statuses.get("OK", 0),
        "errors": {k: v for k, v in statuses.items() if k != "OK"},
        "rps": round(report["rps"], 1),
        "p50_ms": round(dist.get(50, float("nan")), 3),
        "p99_ms": round(dist.get(99, float("nan")), 3),
        "avg_ms": round(report["average"] / 1e6, 3),
        "seconds": round(report["total"] / 1e9, 2),
        "server_cpu_us_per_check": round(cpu / max(report["count"], 1) * 1e6, 1),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "server_cpu_us_per_check": round(statistics.median(r["server_cpu_us_per_check"] for r in runs), 1),
        "runs": runs,
    }


# -- (c) cold bursts ---------------------------------------------------------------------------------------


async def _burst(address: str, requests: list[CheckRequest]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def one(req: CheckRequest) -> tuple[float, int]:
            t0 = time.perf_counter()
            response = await stub.Check(req, timeout=10)
            return (time.perf_counter() - t0) * 1000, response.status.code

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in requests))
        wall = time.perf_counter() - t0
    latencies = sorted(ms for ms, _ in results)
    codes: dict[str, int] = {}
    for _, code in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "checks": len(requests),
        "status_codes": codes,
        "wall_ms": round(wall * 1000, 2),
        "rps": round(len(requests) / wall, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
    }


def cold(name: str, requests_for: Any, expected_lookups: int, delay: float) -> dict[str, Any]:
    """One burst of 100 Checks against a fresh (cold) server; the double's request counts come back on SIGTERM.

    Identical requests are sent by ghz (-c 100 -n 100: a Go client issues them faster than a Python one);
    distinct ones by a grpc.aio client. From the server's audit lines (elapsed_ms), Checks that took at least the
    double's delay waited on Gerrit (led or joined an in-flight lookup); the others came after the lookups
    landed and were answered from the cache. Either way each distinct lookup must reach Gerrit exactly once.
    """
    server = Server(name, ["serve-authz", "0", "--delay", str(delay)])
    try:
        requests = requests_for(server)
        if all(r == requests[0] for r in requests):
            payload = WORK / f"{name}.bin"
            payload.write_bytes(requests[0].SerializeToString())
            run = ghz(server, payload, c=len(requests), connections=1, n=len(requests), cap=60, cpus=2)
            result = {
                "client": "ghz",
                "checks": run["count"],
                "status_codes": {"0": run["ok"], **run["errors"]},
                "wall_ms": round(run["seconds"] * 1000, 2),
                "rps": run["rps"],
                "p50_ms": run["p50_ms"],
                "p99_ms": run["p99_ms"],
            }
        else:
            result = {"client": "grpc.aio", **asyncio.run(_burst(server.address, requests))}
    finally:
        final = server.stop()
    elapsed = [float(m) for m in re.findall(r'"elapsed_ms":([0-9.]+)', Path(server.log.name).read_text())]
    counts: dict[str, int] = final.get("gerrit_requests", {})
    total = sum(counts.values())
    result.update(
        {
            "checks_that_waited_on_gerrit": sum(e >= delay * 1000 for e in elapsed),
            "checks_answered_from_cache": sum(e < delay * 1000 for e in elapsed),
            "gerrit_requests": total,
            "distinct_lookups": len(counts),
            "expected_distinct_lookups": expected_lookups,
            "max_requests_per_lookup": max(counts.values(), default=0),
            "gerrit_requests_per_decision": round(total / result["checks"], 4),
            "one_request_per_lookup": len(counts) == expected_lookups and total == expected_lookups,
            "requests": counts if len(counts) <= 10 else f"{len(counts)} distinct paths",
        }
    )
    return result


# -- main ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="alternating (a)/(b) repetitions (median reported)")
    parser.add_argument("--n", type=int, default=20000, help="Checks per throughput run")
    parser.add_argument("--latency-n", type=int, default=3000, help="Checks per single-request latency run")
    parser.add_argument("--cap", type=float, default=60.0, help="time cap (s) of each ghz run")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--ghz-cpus", type=int, default=1, help="GOMAXPROCS of ghz (the machine has 2 cores)")
    parser.add_argument("--fill", type=int, default=100_000, help="cache entries in the (b) server")
    parser.add_argument("--delay", type=float, default=0.005, help="Gerrit double latency for (c)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, no fill")
    parser.add_argument("--markdown", action="store_true", help="print the summary as a markdown table")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n, args.latency_n, args.fill = 1, 3000, 500, 2000

    ensure_ghz()
    WORK.mkdir(exist_ok=True)
    write_protoset(WORK / "authz.protoset")
    started = time.time()
    results: dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg(),
        },
        "settings": {
            "concurrency": args.concurrency,
            "connections": args.connections,
            "n": args.n,
            "latency_n": args.latency_n,
            "cap_s": args.cap,
            "ghz_cpus": args.ghz_cpus,
            "reps": args.reps,
            "fill": args.fill,
            "cold_delay_s": args.delay,
        },
    }

    print("starting servers (the gerrit-authz one fills its cache first) ...", flush=True)
    noop = Server("noop", ["serve-noop", "0"])
    authz = Server("authz-warm", ["serve-authz", "0", "--long-ttl", "--fill", str(args.fill)])
    try:
        data = {"basic": WORK / "check-basic.bin", "jwt": WORK / "check-jwt.bin"}
        requests = {"basic": check_request(basic(0)), "jwt": check_request("Bearer " + authz.ready["jwt"])}
        for key, path in data.items():
            path.write_bytes(requests[key].SerializeToString())
        sanity(noop.address, requests["basic"], authz=False)
        for key in data:
            sanity(authz.address, requests[key], authz=True)

        targets = {"a_noop": (noop, data["basic"]), "b_basic": (authz, data["basic"]), "b_jwt": (authz, data["jwt"])}
        load = {"c": args.concurrency, "connections": args.connections, "cap": args.cap, "cpus": args.ghz_cpus}
        print("warm-up ...", flush=True)
        for server, payload in targets.values():
            ghz(server, payload, n=max(1000, args.n // 10), **load)

        throughput: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        latency: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for rep in range(args.reps):
            for key, (server, payload) in targets.items():
                run = ghz(server, payload, n=args.n, **load)
                throughput[key].append(run)
                print(f"  rep {rep + 1} {key:8s} c={args.concurrency}: {_fmt(run)}", flush=True)
            for key, (server, payload) in targets.items():
                run = ghz(server, payload, c=1, connections=1, n=args.latency_n, cap=args.cap, cpus=args.ghz_cpus)
                latency[key].append(run)
                print(f"  rep {rep + 1} {key:8s} c=1:  {_fmt(run)}", flush=True)
        results["throughput"] = {k: summarize(v) for k, v in throughput.items()}
        results["latency_c1"] = {k: summarize(v) for k, v in latency.items()}
        a, a1 = results["throughput"]["a_noop"], results["latency_c1"]["a_noop"]
        for key in ("b_basic", "b_jwt"):
            b, b1 = results["throughput"][key], results["latency_c1"][key]
            results[f"ratio_{key}_over_a"] = round(b["rps"] / a["rps"], 3)
            results[f"p50_delta_{key}_ms"] = round(b["p50_ms"] - a["p50_ms"], 3)
            results[f"p50_delta_{key}_c1_ms"] = round(b1["p50_ms"] - a1["p50_ms"], 3)
        results["memory"] = {
            "cache_entries": authz.ready.get("cache_entries"),
            "entries_by_kind": authz.ready.get("fill", {}).get("by_kind"),
            "fill_seconds": authz.ready.get("fill_seconds"),
            "rss_mb_before_fill": round(authz.ready["rss_kb_before_fill"]["VmRSS"] / 1024, 1),
            "rss_mb_after_fill": round(authz.ready.get("rss_kb_after_fill", {}).get("VmRSS", 0) / 1024, 1),
            "rss_mb_after_load": round(authz.rss()["VmRSS"] / 1024, 1),
            "peak_rss_mb": round(authz.rss()["VmHWM"] / 1024, 1),
            "noop_rss_mb_after_load": round(noop.rss()["VmRSS"] / 1024, 1),
        }
    finally:
        noop.stop()
        final = authz.stop()
    # After the fill: only the issuer's discovery + JWKS (first JWT, at the sanity check); 0 during measurement.
    results["memory"]["gerrit_requests_after_fill"] = final.get("gerrit_requests", {})

    print("cold bursts (Gerrit double answers after %.0f ms) ..." % (args.delay * 1000), flush=True)
    results["cold"] = {
        "basic_100_identical": cold(
            "authz-cold-basic", lambda s: [check_request(basic(0))] * 100, expected_lookups=2, delay=args.delay
        ),
        "jwt_100_identical": cold(
            "authz-cold-jwt",
            lambda s: [check_request("Bearer " + s.ready["jwt"])] * 100,
            expected_lookups=4,  # discovery, JWKS, account by email, check.access
            delay=args.delay,
        ),
        "basic_100_distinct_users": cold(
            "authz-cold-distinct",
            lambda s: [check_request(basic(i)) for i in range(1, 101)],
            expected_lookups=200,  # per user: accounts/self + check.access
            delay=args.delay,
        ),
        # Same burst with a slow Gerrit (200 ms): every Check is in flight before the lookups land.
        "basic_100_identical_slow_gerrit": cold(
            "authz-cold-basic-slow", lambda s: [check_request(basic(0))] * 100, expected_lookups=2, delay=0.2
        ),
    }
    results["elapsed_s"] = round(time.time() - started, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, markdown=args.markdown))
    print(f"\nwrote {args.out} in {results['elapsed_s']} s")


def _fmt(run: dict[str, Any]) -> str:
    errs = f" errors={run['errors']}" if run["errors"] else ""
    return (
        f"{run['rps']:8.1f} Check/s  p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms  "
        f"server CPU {run['server_cpu_us_per_check']:.0f} us/Check  n={run['count']}{errs}"
    )


def table(r: dict[str, Any], *, markdown: bool = False) -> str:
    s = r["settings"]
    rows = [("scenario", "Check/s", "p50 ms", "p99 ms", "server CPU us/Check", "notes")]
    for key, label in (("a_noop", "(a) no-op Check"), ("b_basic", "(b) warm, Basic"), ("b_jwt", "(b) warm, JWT")):
        t, lat = r["throughput"][key], r["latency_c1"][key]
        note = "" if key == "a_noop" else f"b/a = {r[f'ratio_{key}_over_a']:.3f}"
        cpu = f"{t['server_cpu_us_per_check']:.0f}"
        rows.append(
            (f"{label}, c={s['concurrency']}", f"{t['rps']:.0f}", f"{t['p50_ms']:.3f}", f"{t['p99_ms']:.3f}", cpu, note)
        )
        note1 = "" if key == "a_noop" else f"p50 - a = {r[f'p50_delta_{key}_c1_ms']:+.3f} ms"
        cpu1 = f"{lat['server_cpu_us_per_check']:.0f}"
        rows.append((f"{label}, c=1", f"{lat['rps']:.0f}", f"{lat['p50_ms']:.3f}", f"{lat['p99_ms']:.3f}", cpu1, note1))
    for key, c in r["cold"].items():
        note = (
            f"{c['gerrit_requests']} Gerrit requests ({c['gerrit_requests_per_decision']}/decision), "
            f"{c['distinct_lookups']} distinct, one per lookup: {c['one_request_per_lookup']}; "
            f"{c['checks_that_waited_on_gerrit']} waited on Gerrit, {c['checks_answered_from_cache']} from cache"
        )
        rows.append((f"(c) cold, {key}", f"{c['rps']:.0f}", f"{c['p50_ms']:.3f}", f"{c['p99_ms']:.3f}", "", note))
    m = r["memory"]
    mem = (
        f"RSS with {m['cache_entries']} cached entries: {m['rss_mb_after_fill']} MB after fill, "
        f"{m['rss_mb_after_load']} MB after the load "
        f"(before fill {m['rss_mb_before_fill']} MB; peak {m['peak_rss_mb']} MB)"
    )
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines) + "\n\n" + mem
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n" + mem


if __name__ == "__main__":
    main()
