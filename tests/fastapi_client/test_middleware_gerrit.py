"""The example app with the REAL gerrit-authz (in-process) and the REAL Gerrit: ASGI transport and a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from _support.authz import basic, check_request, check_stub, make_config, running_server
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from fastapi import FastAPI
from fastapi_support import asgi_client, example_module, middleware_of, uvicorn_server
from google.protobuf import json_format
from websockets.asyncio.client import connect

from authz_server._server import AuthzServer
from fastapi_client.testing import FakeAuthorizer

pytestmark = pytest.mark.gerrit

ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
SECRET_ARTIFACT = "/artifacts/platform%2Fsecret/-/main/out/app.tar"
ENVOY_RECORDING = Path(__file__).resolve().parents[1] / "data" / "envoy_check_request.json"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "x-request-id"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, password_file: Path) -> AsyncIterator[AuthzServer]:
    config = make_config(gerrit.server.url, password_file, identity=[{"gerrit_http_credentials": {}}])
    async with running_server(config) as app:
        yield app


def as_user(user: Any) -> dict[str, str]:
    return {"authorization": basic(user.username, user.http_password)}


def example_app(target: str, **options: Any) -> FastAPI:
    # A cold-cache Check against a freshly started Gerrit takes several Gerrit round trips (credentials,
    # account, check.access) and can exceed the default 0.5 s; these tests are about outcomes, not latency.
    options.setdefault("timeout", 10.0)
    app: FastAPI = example_module().create_app(target, **options)
    return app


async def close_channels(app: FastAPI) -> None:
    """ASGITransport runs no lifespan: close the test loop's channel by hand."""
    if app.middleware_stack is not None:
        await middleware_of(app).channels.close()


# -- through httpx.ASGITransport --------------------------------------------------------------------------------


async def test_asgi_allow_deny_and_spoofing(authz: AuthzServer, gerrit: Any) -> None:
    org = gerrit.org
    app = example_app(authz.address)
    async with asgi_client(app) as client:
        resp = await client.get(ARTIFACT, headers={**as_user(org.bob), "x-gerrit-account-id": "1"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["project"] == "platform/build" and body["file"] == "out/app.tar"
        assert body["x-gerrit-username"] == "bob"
        assert body["x-gerrit-account-id"] == str(org.bob.account_id)  # the spoofed "1" never reaches the app
        assert body["identity"]["rule"] == "read-artifacts" and body["identity"]["account_id"] == org.bob.account_id

        anonymous = await client.get("/dashboard/me")
        assert anonymous.status_code == 401
        assert anonymous.headers.get_list("www-authenticate") == ['Basic realm="gerrit-authz"']
        assert anonymous.json()["error"] and anonymous.json()["rule"] == "dashboard"

        # Wrong Basic credentials: told to send Basic again (curl -u, git and browsers depend on it).
        wrong = await client.get("/me", headers={"authorization": basic("bob", "not-his-password")})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_credentials"
        assert wrong.headers.get_list("www-authenticate") == ['Basic realm="gerrit-authz"']

        denied = await client.get(SECRET_ARTIFACT, headers=as_user(org.carol))
        assert denied.status_code == 403
        assert denied.json()["rule"] == "read-artifacts" and "platform/secret" in denied.json()["reason"]

        me = (await client.get("/dashboard/me", headers=as_user(org.carol))).json()
        assert me["username"] == "carol" and me["account_id"] == org.carol.account_id and me["rule"] == "dashboard"

        deploy = await client.post(f"/deploy/{org.change_merged.number}", headers=as_user(org.alice))
        assert deploy.status_code == 200 and deploy.json()["by"] == "alice"
        not_manager = await client.post(f"/deploy/{org.change_merged.number}", headers=as_user(org.bob))
        assert not_manager.status_code == 403 and "release-managers" in not_manager.json()["reason"]

        assert (await client.get("/healthz")).json() == {"status": "ok"}  # excluded
    await close_channels(app)


async def test_asgi_503_when_the_service_is_stopped(gerrit: Any, password_file: Path) -> None:
    config = make_config(gerrit.server.url, password_file, identity=[{"gerrit_http_credentials": {}}])
    async with running_server(config) as server:
        app = example_app(server.address)
        async with asgi_client(app) as client:
            assert (await client.get(ARTIFACT, headers=as_user(gerrit.org.bob))).status_code == 200
    async with asgi_client(app) as client:
        resp = await client.get(ARTIFACT, headers=as_user(gerrit.org.bob))
        assert resp.status_code == 503
        assert resp.json()["error"] == "authz_unavailable" and resp.headers["retry-after"]
        assert (await client.get("/healthz")).status_code == 200  # excluded paths do not need the service
    await close_channels(app)


async def test_timeout_when_gerrit_hangs(password_file: Path) -> None:
    """A Gerrit that accepts connections and never answers: the request fails closed within the timeout."""
    hanging: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hanging.append(writer)

    listener = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    config = make_config(url, password_file, identity=[{"gerrit_http_credentials": {}}])
    try:
        async with running_server(config) as server:
            app = example_app(server.address, timeout=0.3)
            async with asgi_client(app) as client:
                start = time.monotonic()
                resp = await client.get("/dashboard/me", headers={"authorization": basic("bob", "pw")})
                elapsed = time.monotonic() - start
            await close_channels(app)
    finally:
        for writer in hanging:
            writer.close()
        listener.close()
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert 0.2 < elapsed < 2.0


# -- through a real uvicorn -------------------------------------------------------------------------------------


async def test_uvicorn_http_and_websockets(authz: AuthzServer, gerrit: Any) -> None:
    org = gerrit.org
    app = example_app(authz.address)
    async with uvicorn_server(app) as base, httpx.AsyncClient(base_url=base) as client:
        resp = await client.get(ARTIFACT, headers={**as_user(org.bob), "x-gerrit-account-id": "1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["x-gerrit-username"] == "bob"
        assert resp.json()["x-gerrit-account-id"] == str(org.bob.account_id)

        anonymous = await client.get("/dashboard/me")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == 'Basic realm="gerrit-authz"'
        denied = await client.get(SECRET_ARTIFACT, headers=as_user(org.carol))
        assert denied.status_code == 403 and denied.json()["rule"] == "read-artifacts"
        assert (await client.get("/healthz")).status_code == 200

        ws_url = base.replace("http://", "ws://") + "/dashboard/ws"
        async with connect(ws_url, additional_headers=as_user(org.bob)) as ws:
            assert json.loads(await ws.recv()) == {"hello": "bob"}
            await ws.send("ping")
            assert await ws.recv() == "ping"

        with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
            async with connect(ws_url):
                pass
        response = rejected.value.response
        assert response.status_code == 401  # the real status, via the websocket.http.response extension
        assert response.headers["www-authenticate"] == 'Basic realm="gerrit-authz"'
        assert json.loads(response.body)["rule"] == "dashboard"

        with pytest.raises(websockets.exceptions.InvalidStatus) as wrong:
            async with connect(ws_url, additional_headers={"authorization": basic("bob", "not-his")}):
                pass
        assert wrong.value.response.status_code == 401
    # uvicorn ran the lifespan: shutting down closed the channel it had opened
    assert len(middleware_of(app).channels) == 0


async def test_uvicorn_503_when_the_service_is_stopped(gerrit: Any, password_file: Path) -> None:
    config = make_config(gerrit.server.url, password_file, identity=[{"gerrit_http_credentials": {}}])
    server_cm = running_server(config)
    server = await server_cm.__aenter__()
    app = example_app(server.address)
    async with uvicorn_server(app) as base, httpx.AsyncClient(base_url=base) as client:
        try:
            assert (await client.get("/dashboard/me", headers=as_user(gerrit.org.dave))).status_code == 200
        finally:
            await server_cm.__aexit__(None, None, None)
        resp = await client.get("/dashboard/me", headers=as_user(gerrit.org.dave))
        assert resp.status_code == 503 and resp.json()["error"] == "authz_unavailable"
        assert (await client.get("/healthz")).status_code == 200
        with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
            async with connect(
                base.replace("http://", "ws://") + "/dashboard/ws", additional_headers=as_user(gerrit.org.dave)
            ):
                pass
        assert rejected.value.response.status_code == 503


# -- the middleware's CheckRequest decides like Envoy's ---------------------------------------------------------


async def middleware_check_request(method: str, path: str, headers: dict[str, str], host: str) -> CheckRequest:
    """The CheckRequest the middleware builds for this HTTP request (recorded by a FakeAuthorizer)."""
    async with FakeAuthorizer() as fake:
        fake.allow()
        app = example_app(fake.target)
        async with asgi_client(app, base_url=f"http://{host}") as client:
            client.headers.clear()  # no httpx defaults (user-agent, accept...): only the recorded client's headers
            await client.request(method, path, headers=headers)
        await close_channels(app)
    return fake.last_request


def comparable(request: CheckRequest) -> dict[str, Any]:
    http = request.attributes.request.http
    headers = {k: v for k, v in http.headers.items() if k not in HOP_BY_HOP}
    return {"method": http.method, "path": http.path, "host": http.host, "scheme": http.scheme, "headers": headers}


def outcome(resp: CheckResponse) -> tuple[int, str, int]:
    if resp.status.code == 0:
        rule = {h.header.key: h.header.value for h in resp.ok_response.headers}["x-authz-rule"]
        return 0, rule, 200
    return resp.status.code, json.loads(resp.denied_response.body)["rule"], resp.denied_response.status.code


def envoy_cases(org: Any) -> list[CheckRequest]:
    """Envoy-shaped requests: the one recorded from the real Envoy (as recorded, and with real users' credentials
    and paths swapped in so that allow and 403 are compared too), and our builder's."""
    recorded = json_format.Parse(ENVOY_RECORDING.read_text(), CheckRequest(), ignore_unknown_fields=True)
    assert recorded.attributes.request.http.method, f"{ENVOY_RECORDING} holds no attributes.request.http"
    cases = [recorded]
    for user, path in ((org.bob, ARTIFACT + "?x=1"), (org.carol, SECRET_ARTIFACT)):
        variant = CheckRequest()
        variant.CopyFrom(recorded)
        http = variant.attributes.request.http
        http.headers["authorization"] = as_user(user)["authorization"]
        http.path = http.headers[":path"] = path
        cases.append(variant)
    accept, host = {"accept": "application/json", "user-agent": "curl/8.5.0"}, "svc.example"
    return [
        *cases,
        check_request("GET", ARTIFACT, {**accept, **as_user(org.bob)}, host=host),
        check_request("GET", SECRET_ARTIFACT, {**accept, **as_user(org.carol)}, host=host),
        check_request("GET", "/dashboard/me?verbose=1", accept, host=host),
        check_request(
            # httpx sends an empty POST with content-length: 0, and Envoy passes it on.
            "POST",
            f"/deploy/{org.change_merged.number}",
            {**accept, **as_user(org.alice), "content-length": "0"},
            host="svc.example",
        ),
    ]


async def test_same_decision_as_an_envoy_shaped_check_request(authz: AuthzServer, gerrit: Any) -> None:
    decisions: list[tuple[int, str, int]] = []
    for envoy_request in envoy_cases(gerrit.org):
        http = envoy_request.attributes.request.http
        client_headers = {k: v for k, v in http.headers.items() if not k.startswith(":") and k not in HOP_BY_HOP}
        ours = await middleware_check_request(http.method, http.path, client_headers, http.host)
        theirs_fields, ours_fields = comparable(envoy_request), comparable(ours)
        for key in ("method", "path", "host", "scheme"):
            assert ours_fields[key] == theirs_fields[key], key
        assert ours_fields["headers"] == theirs_fields["headers"]
        async with check_stub(authz.address) as stub:
            theirs_decision = outcome(await stub.Check(envoy_request, timeout=10))
            ours_decision = outcome(await stub.Check(ours, timeout=10))
        assert ours_decision == theirs_decision, http.path
        decisions.append(ours_decision)
    # The cases really differ: an allow, a 401 (the recorded fake user) and a 403 are among them.
    assert {d[2] for d in decisions} >= {200, 401, 403}
