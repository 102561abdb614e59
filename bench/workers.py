"""Through real Envoy: the p50 a warm Check adds at c=1, and ``server.workers`` 2 vs 1, SO_REUSEPORT vs N addresses.

    PYTHONPATH=. python bench/workers.py [--duration 8] [--connections 16] [--out bench/workers_results.json]

Envoy (``--concurrency 2``: two worker threads, so its default pattern towards an ext_authz cluster is one
long-lived HTTP/2 connection per thread and upstream host) runs the example's ext_authz filter in front of a
``direct_response`` route; wrk loads it over HTTP/1.1 with a Basic credential. The ext_authz cluster is, in turn:

- ``noop``: bench/servers.py's no-op Check server (what Envoy + ext_authz cost without any decision);
- ``workers1``: ``gerrit-authz serve`` with ``server.workers: 1``;
- ``workers2``: ``server.workers: 2`` (one address, SO_REUSEPORT: the kernel gives each of Envoy's connections to
  one worker);
- ``workers2_recycled``: the same, with ``max_requests_per_connection`` on the cluster (Envoy opens a new
  connection every ``--recycle`` Checks, and the kernel places each one afresh);
- ``workers2_own_ports``: ``workers: 2`` with ``worker_port_base``: the workers' own ports as two endpoints of the
  cluster with ``LEAST_REQUEST`` (Envoy balances every Check);
- ``two_processes``: two independent ``gerrit-authz serve`` (``workers: 1``) as two endpoints, ``LEAST_REQUEST``.

gerrit-authz asks a loopback Gerrit double (alice is in ``devs``), with 1 h TTLs, so after the warm-up every
Check is a cache or memo hit. Reported per mode: requests/s at ``--connections`` (wrk ``-t1``), p50/p99 at c=1,
the server processes' CPU per request, and how Envoy's connections were spread over the workers. One run; the
machine has 2 cores shared by wrk, Envoy, the servers and other people's work, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from _support.envoy import EnvoyProcess, example_bootstrap, hcm_of, listener_named  # noqa: E402
from run import free_port  # noqa: E402

AUTH = "Basic " + base64.b64encode(b"alice:pw").decode()
ALICE = {"_account_id": 1000002, "username": "alice", "email": "alice@example.com"}


class _Gerrit(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/a/accounts/self"):
            data: Any = ALICE if self.headers.get("authorization") == AUTH else None
        elif self.path.startswith("/a/accounts/1000002/groups"):
            data = [{"id": "d" * 40, "name": "devs"}]
        else:
            data = None
        body = b")]}'\n" + json.dumps(data).encode() if data is not None else b"no"
        self.send_response(200 if data is not None else 401)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Authz:
    """``gerrit-authz serve`` (or the no-op server) as a subprocess; ``pids`` are the processes doing Checks."""

    def __init__(self, workdir: Path, gerrit: str, *, workers: int, noop: bool = False, own: bool = False) -> None:
        self.port = free_port()
        self.log = (workdir / f"authz-{self.port}.log").open("wb")
        env = {**os.environ, "BENCH_GERRIT_PASSWORD": "x", "PYTHONPATH": str(REPO)}
        if noop:
            cmd = [sys.executable, str(BENCH / "servers.py"), "serve-noop", str(self.port)]
        else:
            config = workdir / f"config-{self.port}.yaml"
            config.write_text(f"""
server: {{listen: "127.0.0.1:{self.port}", admin_listen: null, workers: {workers}, config_watch_interval: 0s,
          worker_port_base: {0 if own else "null"}}}
gerrit: {{url: "{gerrit}", username: authz-bot, password_env: BENCH_GERRIT_PASSWORD}}
identity: [{{gerrit_http_credentials: {{}}}}]
cache: {{ttl: {{account: 1h, credentials: 1h, groups: 1h, capabilities: 1h, access: 1h, change: 1h}}}}
rules:
  - {{name: devs, match: {{path_prefix: /}}, require: {{group: devs}}}}
""")
            cmd = [sys.executable, "-m", "authz_server", "serve", "--config", str(config), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=REPO, text=True)
        assert self.proc.stdout is not None
        self.pids = [self.proc.pid]
        self.own: list[str] = []  # the workers' own addresses (server.worker_port_base)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server did not start; see {self.log.name}")
            if noop or (workers == 1 and "listening" in line):
                break
            if m := re.search(r"worker \d+ ext_authz gRPC listening on (\S+)", line):
                self.own.append(m.group(1))
            if m := re.search(r"workers \(([\d, ]+)\)", line):
                self.pids = [int(p) for p in m.group(1).split(", ")]
                break
        self.address = f"127.0.0.1:{self.port}"

    def connections(self) -> list[int]:
        """Established connections to the port held by each Check process."""
        return self.connections_to(self.port)

    def connections_to(self, port: int) -> list[int]:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                    inodes.add(f[9])
        counts = []
        for pid in self.pids:
            links = [os.readlink(p) for p in Path(f"/proc/{pid}/fd").iterdir()]
            counts.append(sum(1 for link in links if link[8:-1] in inodes))
        return counts

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def envoy_for(addresses: list[str], workdir: Path, *, recycle: int = 0) -> EnvoyProcess:
    bootstrap = example_bootstrap()
    hcm = hcm_of(listener_named(bootstrap, "ingress"))
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    ]
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "gerrit_authz":
            cluster["lb_policy"] = "LEAST_REQUEST" if len(addresses) > 1 else "ROUND_ROBIN"
            if recycle:  # a new connection every `recycle` Checks: the kernel places each one afresh
                options = cluster["typed_extension_protocol_options"]
                options = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                options["common_http_protocol_options"] = {"max_requests_per_connection": recycle}
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {"address": a.rpartition(":")[0], "port_value": int(a.rpartition(":")[2])}
                        }
                    }
                }
                for a in addresses
            ]
    return EnvoyProcess(bootstrap, workdir / f"envoy-{len(addresses)}-{time.monotonic_ns()}").start()


def wrk(url: str, *, connections: int, duration: float) -> dict[str, float]:
    seconds = f"-d{max(1, round(duration))}s"  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{connections}", seconds, "--latency", "-H", f"authorization: {AUTH}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
    }


def spread_trials(server: Authz, workdir: Path, trials: int) -> list[list[int]]:
    """Envoy started afresh ``trials`` times: how its connections landed on the workers each time."""
    spreads = []
    for _ in range(trials):
        envoy = envoy_for([server.address], workdir)
        try:
            wrk(envoy.url() + "/x", connections=4, duration=1)
            spreads.append(server.connections())
        finally:
            envoy.stop()
    return spreads


def measure(
    name: str, servers: list[Authz], workdir: Path, args: argparse.Namespace, *, recycle: int = 0
) -> dict[str, Any]:
    addresses = [a for s in servers for a in (s.own or [s.address])]
    envoy = envoy_for(addresses, workdir, recycle=recycle)
    try:
        url = envoy.url() + "/x"
        pids = [p for s in servers for p in s.pids]
        wrk(url, connections=args.connections, duration=2)  # warm-up: caches, memo, Envoy's connections
        cpu0 = cpu_seconds(pids)
        loaded = wrk(url, connections=args.connections, duration=args.duration)
        cpu = cpu_seconds(pids) - cpu0
        single = wrk(url, connections=1, duration=args.duration / 2)
        spread = [n for s in servers for n in s.connections()]
        if servers[0].own:  # per worker: connections to its own port
            spread = [s.connections_to(int(a.rpartition(":")[2]))[i] for s in servers for i, a in enumerate(s.own)]
        result = {
            "rps": loaded["rps"],
            "non_2xx": loaded["non_2xx"] + single["non_2xx"],
            "p50_ms_loaded": loaded["p50_ms"],
            "p50_ms_c1": single["p50_ms"],
            "p99_ms_c1": single["p99_ms"],
            "server_cpu_us_per_request": round(cpu / max(loaded["requests"], 1) * 1e6, 1),
            "envoy_connections_per_process": spread,
        }
        print(f"  {name:14s} {json.dumps(result)}", flush=True)
        return result
    finally:
        envoy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per loaded wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections to Envoy")
    parser.add_argument("--out", type=Path, default=BENCH / "workers_results.json")
    parser.add_argument("--spread-trials", type=int, default=8, help="Envoy restarts to see connection placement")
    parser.add_argument("--recycle", type=int, default=500, help="max_requests_per_connection (recycled mode)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    gerrit = ThreadingHTTPServer(("127.0.0.1", 0), _Gerrit)
    threading.Thread(target=gerrit.serve_forever, daemon=True).start()
    gerrit_url = f"http://127.0.0.1:{gerrit.server_address[1]}"
    results: dict[str, Any] = {
        "command": "python bench/workers.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "settings": {"duration_s": args.duration, "wrk_connections": args.connections, "envoy_concurrency": 2},
    }
    modes = {
        "noop": lambda: [Authz(workdir, gerrit_url, workers=1, noop=True)],
        "workers1": lambda: [Authz(workdir, gerrit_url, workers=1)],
        "workers2": lambda: [Authz(workdir, gerrit_url, workers=2)],
        "workers2_recycled": lambda: [Authz(workdir, gerrit_url, workers=2)],
        "workers2_own_ports": lambda: [Authz(workdir, gerrit_url, workers=2, own=True)],
        "two_processes": lambda: [Authz(workdir, gerrit_url, workers=1), Authz(workdir, gerrit_url, workers=1)],
    }
    for name, start in modes.items():
        servers = start()
        try:
            recycle = args.recycle if name == "workers2_recycled" else 0
            results[name] = measure(name, servers, workdir, args, recycle=recycle)
            if name == "workers2" and args.spread_trials:
                spreads = spread_trials(servers[0], workdir, args.spread_trials)
                results["workers2_spread_trials"] = spreads
                print(f"  connections per worker, Envoy started {len(spreads)} times: {spreads}", flush=True)
        finally:
            for s in servers:
                s.stop()
    gerrit.shutdown()
    noop, one = results["noop"], results["workers1"]
    results["added_p50_ms_c1_workers1"] = round(one["p50_ms_c1"] - noop["p50_ms_c1"], 3)
    results["ratio_workers2_over_workers1"] = round(results["workers2"]["rps"] / one["rps"], 3)
    results["ratio_workers2_recycled_over_workers1"] = round(results["workers2_recycled"]["rps"] / one["rps"], 3)
    results["ratio_workers2_own_ports_over_workers1"] = round(results["workers2_own_ports"]["rps"] / one["rps"], 3)
    results["ratio_two_processes_over_workers1"] = round(results["two_processes"]["rps"] / one["rps"], 3)
    results["ratio_workers1_over_noop"] = round(one["rps"] / noop["rps"], 3)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("added", "ratio"))}, indent=2))


if __name__ == "__main__":
    main()
