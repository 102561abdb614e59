"""What AuthzMiddleware costs: requests/s of the example app with the middleware vs. the same app without it.

    /work/venv/bin/python bench/fastapi_overhead.py [--duration 10s] [--connections 16] [--threads 1]

Everything runs on loopback: a tiny HTTP Gerrit double (a thread of this process, answering the handful of REST
calls a Check needs), the REAL gerrit-authz (``python -m authz_server serve``, a subprocess), and the example app
under uvicorn (a subprocess), loaded by ``wrk`` at a fixed concurrency for a bounded duration. The service cache
is warmed before measuring, so the figure is the middleware's overhead plus one cached Check per request (which
is what production sees), not Gerrit's latency. Prints one JSON document; ``ratio`` = protected / bare rps.

CPU time per request of the app process and of gerrit-authz is reported too (from /proc), because on a small
machine the three processes and wrk share the CPUs: ``middleware_cpu_us_per_request`` is what the middleware adds
to the app process, and ``app_cpu_bound_ratio`` the ratio an app would see on its own core with gerrit-authz
elsewhere.

For reference, ``grpc_client_loop`` is a bare grpc.aio client (a subprocess: the middleware's channel options and
the CheckRequest it sends for this path, no ASGI, no app) making the same Check from as many concurrent tasks as wrk
has connections: the client CPU per Check that any grpc.aio caller pays, whatever the middleware does around it.
``middleware_cpu_beyond_grpc_us`` is the middleware's cost above that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
PATH = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
USER = {"_account_id": 1000001, "username": "bob", "email": "bob@example.com", "name": "Bob"}
USER_PASSWORD = "bench-user-secret"
BOT_PASSWORD = "bench-bot-secret"
TARGET_RATIO = 0.6


# -- the apps uvicorn serves (``--factory bench.fastapi_overhead:protected_app``) --------------------------------


def _create_app(protect: bool) -> Any:
    from examples.fastapi_app.app import create_app

    return create_app(os.environ.get("GERRIT_AUTHZ_TARGET"), protect=protect)


def protected_app() -> Any:
    """The example app behind AuthzMiddleware (target from ``GERRIT_AUTHZ_TARGET``)."""
    return _create_app(True)


def bare_app() -> Any:
    """The same example app without the middleware."""
    return _create_app(False)


# -- Gerrit double ---------------------------------------------------------------------------------------------


class _Gerrit(BaseHTTPRequestHandler):
    hits = 0
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        type(self).hits += 1
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("authorization", "")
        user = base64.b64decode(auth.removeprefix("Basic ")).decode() if auth.startswith("Basic ") else ""
        if path == "/a/accounts/self":
            self._answer(200, USER) if user == f"bob:{USER_PASSWORD}" else self._answer(401, None)
        elif user != f"authz-bot:{BOT_PASSWORD}":
            self._answer(401, None)
        elif path in ("/a/accounts/1000001", "/a/accounts/bob", "/a/accounts/bob@example.com"):
            self._answer(200, USER)
        elif path == "/a/accounts/1000001/groups":
            self._answer(200, [])
        elif path == "/a/accounts/1000001/capabilities":
            self._answer(200, {})
        elif path == "/a/projects/platform/build/check.access":
            self._answer(200, {"status": 200, "message": "bob can read refs/heads/main"})
        else:
            self._answer(404, None)

    def _answer(self, status: int, data: Any) -> None:
        body = (")]}'\n" + json.dumps(data)).encode() if data is not None else b"Not found"
        self.send_response(status)
        self.send_header("content-type", "application/json" if data is not None else "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def gerrit_double() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gerrit)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- processes ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextmanager
def authz_service(gerrit_url: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """The real gerrit-authz in a subprocess; yields its ext_authz address and pid."""
    (workdir / "bot-password").write_text(BOT_PASSWORD)
    config = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None, "reflection": False, "check_timeout": "1s"},
        "gerrit": {"url": gerrit_url, "username": "authz-bot", "password_file": str(workdir / "bot-password")},
        "identity": [{"gerrit_http_credentials": {}}],
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"},
            {
                "name": "read-artifacts",
                "match": {"methods": ["GET", "HEAD"], "path": "/artifacts/{project}/-/{branch}/{file:path}"},
                "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
            },
            {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
        ],
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / "authz.log").open("w")  # the audit log: one JSON line per decision
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz_server", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if not match:
            raise RuntimeError(f"gerrit-authz did not start: {line!r}; see {workdir / 'authz.log'}")
        yield match.group(1), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads included (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def uvicorn_app(factory: str, target: str) -> Iterator[tuple[str, int]]:
    """``uvicorn --factory`` on a free loopback port, one worker; yields the base URL and the pid."""
    port = free_port()
    env = {**os.environ, "GERRIT_AUTHZ_TARGET": target, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"uvicorn {factory} exited with {proc.returncode}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_wrk(url: str, auth: str, args: argparse.Namespace, duration: str) -> dict[str, Any]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}", "--latency"]
    cmd += ["-H", f"Authorization: {auth}", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    return {
        "requests_per_s": rps,
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "latency": {f"p{k}": v for k, v in latency.items()},
        "command": " ".join([*cmd[:-3], "-H", "'Authorization: Basic ...'", url]),
    }


def measure(factory: str, target: str, authz_pid: int, auth: str, args: argparse.Namespace) -> dict[str, Any]:
    with uvicorn_app(factory, target) as (base, app_pid):
        with httpx.Client(base_url=base, headers={"authorization": auth}) as client:
            for _ in range(20):  # warm the app and the service's cache (credentials, account, check.access)
                resp = client.get(PATH)
                resp.raise_for_status()
            body = resp.json()
        run_wrk(base + PATH, auth, args, "2s")  # warm-up at full concurrency, not measured
        app_cpu, authz_cpu, gerrit_hits = cpu_seconds(app_pid), cpu_seconds(authz_pid), _Gerrit.hits
        result = run_wrk(base + PATH, auth, args, args.duration)
        result["gerrit_requests"] = _Gerrit.hits - gerrit_hits  # 0 when the service answered from its cache
        # CPU per request shows where the time goes (2 CPUs shared by wrk, uvicorn and gerrit-authz).
        requests = max(result["requests"], 1)
        result["app_cpu_us_per_request"] = round((cpu_seconds(app_pid) - app_cpu) / requests * 1e6)
        result["authz_cpu_us_per_request"] = round((cpu_seconds(authz_pid) - authz_cpu) / requests * 1e6)
        result["sample_body"] = {k: body[k] for k in ("x-gerrit-username", "x-authz-rule")}
        return result


# -- the bare grpc.aio client reference ---------------------------------------------------------------------------


async def _grpc_client_loop(target: str, auth: str, concurrency: int, calls: int) -> dict[str, Any]:
    """Run in the ``--grpc-client-loop`` subprocess: only grpc.aio calls, timed with this process's CPU time."""
    from fastapi_client._channel import ChannelPool
    from fastapi_client._request import check_request_from_scope

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(PATH),
        "raw_path": PATH.encode(),
        "query_string": b"",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", auth.encode())],
    }
    request = check_request_from_scope(scope)[0]
    pool = ChannelPool(target)
    check = pool.check()

    async def worker(n: int) -> None:
        for _ in range(n):
            response = await check(request, timeout=1.0)
            assert response.status.code == 0, response

    async def run(n: int) -> None:
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))

    await run(max(calls // 10, concurrency))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await run(calls)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await pool.close()
    done = calls // concurrency * concurrency
    return {"checks": done, "checks_per_s": round(done / wall), "client_cpu_us_per_check": round(cpu / done * 1e6)}


def grpc_client_loop(target: str, authz_pid: int, auth: str, concurrency: int, calls: int = 20000) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--grpc-client-loop", target, "--connections", str(concurrency)]
    cmd += ["--calls", str(calls)]
    authz_cpu = cpu_seconds(authz_pid)
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_AUTH": auth}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env).stdout
    result: dict[str, Any] = json.loads(out)
    result["authz_cpu_us_per_check"] = round((cpu_seconds(authz_pid) - authz_cpu) / result["checks"] * 1e6)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s", help="wrk -d (default 10s)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1: leave CPU to the servers)")
    parser.add_argument("--grpc-client-loop", metavar="TARGET", help=argparse.SUPPRESS)  # the reference subprocess
    parser.add_argument("--calls", type=int, default=20000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpc_client_loop:
        loop_result = asyncio.run(
            _grpc_client_loop(args.grpc_client_loop, os.environ["BENCH_AUTH"], args.connections, args.calls)
        )
        print(json.dumps(loop_result))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package 'wrk')", file=sys.stderr)
        return 2
    auth = "Basic " + base64.b64encode(f"bob:{USER_PASSWORD}".encode()).decode()
    with (
        tempfile.TemporaryDirectory() as tmp,
        gerrit_double() as gerrit_url,
        authz_service(gerrit_url, Path(tmp)) as (target, authz_pid),
    ):
        bare = measure("bench.fastapi_overhead:bare_app", target, authz_pid, auth, args)
        protected = measure("bench.fastapi_overhead:protected_app", target, authz_pid, auth, args)
        client_loop = grpc_client_loop(target, authz_pid, auth, args.connections)
    ratio = protected["requests_per_s"] / bare["requests_per_s"]
    middleware_cpu = protected["app_cpu_us_per_request"] - bare["app_cpu_us_per_request"]
    result = {
        "benchmark": "fastapi_client.AuthzMiddleware overhead",
        "path": PATH,
        "concurrency": args.connections,
        "duration": args.duration,
        "cpus": os.cpu_count(),
        "bare": bare,
        "protected": protected,
        # The middleware's own cost in the app process (gRPC client, CheckRequest, header edits), and the ratio
        # the app would reach if it were CPU-bound on its own core with gerrit-authz running elsewhere.
        "middleware_cpu_us_per_request": middleware_cpu,
        "grpc_client_loop": client_loop,
        "middleware_cpu_beyond_grpc_us": middleware_cpu - client_loop["client_cpu_us_per_check"],
        "app_cpu_bound_ratio": round(bare["app_cpu_us_per_request"] / max(protected["app_cpu_us_per_request"], 1), 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))
    print(
        f"bare {bare['requests_per_s']:.0f} req/s, with AuthzMiddleware {protected['requests_per_s']:.0f} req/s: "
        f"ratio {ratio:.2f} (target >= {TARGET_RATIO})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
