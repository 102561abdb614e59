"""AuthzMiddleware against FakeAuthorizer (a real grpc.aio server): request building, allow, deny, failures."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption, QueryParameter
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from fastapi import FastAPI, Request
from fastapi_support import asgi_client, closed_port, lifespan, middleware_of
from google.protobuf.wrappers_pb2 import BoolValue
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.sdk.trace import TracerProvider
from starlette.authentication import requires

from fastapi_client import AuthzIdentity, AuthzMiddleware, AuthzUser, CurrentIdentity, OptionalIdentity
from fastapi_client.testing import FakeAuthorizer

Action = HeaderValueOption.HeaderAppendAction
ARTIFACT = "/artifacts/platform%2Fbuild/-/main/a%20b.txt?x=1&y=%2F"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAuthorizer]:
    async with FakeAuthorizer() as f:
        yield f


def make_app(target: str, *, calls: list[str] | None = None, **options: Any) -> FastAPI:
    """An app that echoes what it sees: headers, identity, Starlette user/auth."""
    app = FastAPI()
    seen = calls if calls is not None else []

    @app.get("/needs-auth")
    @requires("authenticated")
    async def needs_auth(request: Request) -> dict[str, Any]:
        return {"user": request.user.display_name, "identity": request.user.identity}

    @app.get("/me")
    async def me(who: CurrentIdentity) -> dict[str, Any]:
        return asdict(who)

    @app.get("/maybe")
    async def maybe(who: OptionalIdentity) -> dict[str, Any] | None:
        return None if who is None else asdict(who)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "OPTIONS", "DELETE"])
    async def echo(path: str, request: Request) -> dict[str, Any]:
        seen.append(request.url.path)
        authz = request.state.authz
        return {
            "path": path,
            "query": request.url.query,
            "body": (await request.body()).decode(),
            "headers": [list(h) for h in request.headers.items()],
            "authz": None if authz is None else asdict(authz),
            "user": request.user.display_name,
            "authenticated": request.user.is_authenticated,
            "scopes": request.auth.scopes,
        }

    app.add_middleware(AuthzMiddleware, target=target, **options)
    return app


def headers_seen(resp: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k, []).append(v)
    return out


def ok(response: OkHttpResponse) -> CheckResponse:
    return CheckResponse(status=RpcStatus(code=0), ok_response=response)


# -- the CheckRequest ------------------------------------------------------------------------------------------


async def test_check_request_has_what_envoy_sends(fake: FakeAuthorizer) -> None:
    fake.allow(account_id=7, username="bob")
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get(
            ARTIFACT,
            headers=[("x-multi", "a"), ("X-Multi", "b"), ("x-request-id", "req-123"), ("authorization", "Basic Ym9i")],
        )
    assert resp.status_code == 200
    attrs = fake.last_request.attributes
    http = attrs.request.http
    assert http.method == "GET"
    assert http.path == ARTIFACT  # raw: %2F and %20 stay encoded, query included
    assert http.host == "svc.example:8080"
    assert http.scheme == "http"
    assert http.protocol == "HTTP/1.1"
    assert http.id == "req-123"
    headers = dict(http.headers)
    assert headers["x-multi"] == "a,b"
    assert headers["authorization"] == "Basic Ym9i"
    assert headers[":path"] == ARTIFACT and headers[":method"] == "GET"
    assert headers[":authority"] == "svc.example:8080" and headers[":scheme"] == "http"
    assert headers["x-request-id"] == "req-123"
    assert "host" not in headers  # Envoy sends Host only as :authority
    assert attrs.source.address.socket_address.address == "203.0.113.7"
    assert attrs.source.address.socket_address.port_value == 51234
    assert headers_seen(resp)["x-request-id"] == ["req-123"]


async def test_request_id_is_generated_and_forwarded(fake: FakeAuthorizer) -> None:
    fake.allow()
    async with asgi_client(make_app(fake.target)) as client:
        first = await client.post("/upload", content=b"payload")
        second = await client.get("/x")
    ids = [r.attributes.request.http.id for r in fake.requests]
    assert len(set(ids)) == 2
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert headers_seen(first)["x-request-id"] == [ids[0]]
    assert headers_seen(second)["x-request-id"] == [ids[1]]
    assert fake.requests[0].attributes.request.http.method == "POST"
    assert first.json()["body"] == "payload"  # the body reaches the app untouched


async def test_context_extensions_are_sent(fake: FakeAuthorizer) -> None:
    fake.allow()
    async with asgi_client(make_app(fake.target, context_extensions={"service": "artifacts"})) as client:
        await client.get("/x")
    assert dict(fake.last_request.attributes.context_extensions) == {"service": "artifacts"}


# -- allow ------------------------------------------------------------------------------------------------------


async def test_allow_injects_identity_and_strips_spoofed_headers(fake: FakeAuthorizer) -> None:
    fake.allow(
        account_id=1000001,
        username="bob",
        email="bob@example.com",
        rule="read-artifacts",
        response_headers={"x-authz-cache": "hit"},
    )
    spoofed = {"x-gerrit-account-id": "1", "X-Gerrit-Role": "admin", "x-authz-rule": "forged"}
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get(ARTIFACT, headers=spoofed)
    assert resp.status_code == 200
    seen = headers_seen(resp)
    assert seen["x-gerrit-account-id"] == ["1000001"]
    assert seen["x-gerrit-username"] == ["bob"]
    assert seen["x-gerrit-email"] == ["bob@example.com"]
    assert seen["x-authz-rule"] == ["read-artifacts"]
    assert "x-gerrit-role" not in seen
    assert resp.headers["x-authz-cache"] == "hit"  # response_headers_to_add
    body = resp.json()
    assert body["authz"] == {
        "account_id": 1000001,
        "username": "bob",
        "email": "bob@example.com",
        "rule": "read-artifacts",
        "decision_id": seen["x-authz-decision-id"][0],
        "authenticated": True,
    }
    assert body["user"] == "bob" and body["authenticated"] is True and body["scopes"] == ["authenticated"]


async def test_spoofed_headers_stripped_even_when_the_service_does_not_list_them(fake: FakeAuthorizer) -> None:
    fake.respond(lambda req: ok(OkHttpResponse()))
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get("/x", headers={"x-gerrit-account-id": "1", "x-authz-decision-id": "d"})
    seen = headers_seen(resp)
    assert not [k for k in seen if k.startswith(("x-gerrit-", "x-authz-"))]
    assert resp.json()["authz"]["authenticated"] is False


async def test_header_mutations_follow_envoy_append_actions(fake: FakeAuthorizer) -> None:
    def option(key: str, value: str, action: Any = None, append: bool | None = None) -> HeaderValueOption:
        opt = HeaderValueOption(header=HeaderValue(key=key, value=value))
        if action is not None:
            opt.append_action = action
        if append is not None:
            opt.append.CopyFrom(BoolValue(value=append))
        return opt

    fake.respond(
        lambda req: ok(
            OkHttpResponse(
                headers=[
                    option("x-tag", "b", Action.APPEND_IF_EXISTS_OR_ADD),
                    option("x-keep", "new", Action.ADD_IF_ABSENT),
                    option("x-absent", "new", Action.OVERWRITE_IF_EXISTS),
                    option("x-replace", "new", Action.OVERWRITE_IF_EXISTS),
                    option("x-absent", "added", Action.ADD_IF_ABSENT),
                    option("x-legacy", "set", append=False),
                    option("x-authz-rule", "r", Action.OVERWRITE_IF_EXISTS_OR_ADD),
                ],
                headers_to_remove=["cookie"],
                query_parameters_to_set=[QueryParameter(key="tenant", value="t1")],
                query_parameters_to_remove=["debug"],
            )
        )
    )
    sent = {"x-tag": "a", "x-keep": "old", "x-legacy": "old", "x-replace": "old", "cookie": "c=1"}
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get("/x?debug=1&a=2", headers=sent)
    seen = headers_seen(resp)
    assert seen["x-tag"] == ["a", "b"]
    assert seen["x-keep"] == ["old"]
    assert seen["x-absent"] == ["added"]  # OVERWRITE_IF_EXISTS did nothing; ADD_IF_ABSENT then added it
    assert seen["x-replace"] == ["new"]
    assert seen["x-legacy"] == ["set"]
    assert "cookie" not in seen
    assert resp.json()["query"] == "a=2&tenant=t1"
    assert resp.json()["authz"]["rule"] == "r"


# -- deny -------------------------------------------------------------------------------------------------------


async def test_401_passes_through_with_challenge_and_body(fake: FakeAuthorizer) -> None:
    body = {"error": "unauthenticated", "reason": "no credential", "rule": "signed-in", "decision_id": "d1"}
    fake.deny(401, body)
    calls: list[str] = []
    async with asgi_client(make_app(fake.target, calls=calls)) as client:
        resp = await client.get("/dashboard")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="gerrit-authz"'
    assert resp.headers["content-type"] == "application/json"
    assert resp.content == json.dumps(body, separators=(",", ":")).encode()
    assert calls == []  # the app never ran


async def test_a_401_offering_several_schemes_sends_each_as_its_own_line(fake: FakeAuthorizer) -> None:
    fake.deny(401, challenges=("Basic", "Bearer"))  # as gerrit-authz answers with Gerrit credentials and tokens
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get("/dashboard")
    assert resp.status_code == 401
    assert resp.headers.get_list("www-authenticate") == ['Basic realm="gerrit-authz"', 'Bearer realm="gerrit-authz"']


async def test_403_passes_through_with_service_headers(fake: FakeAuthorizer) -> None:
    fake.deny(403, "no read on platform/secret", headers={"x-authz-decision-id": "d2", "content-type": "text/plain"})
    calls: list[str] = []
    async with asgi_client(make_app(fake.target, calls=calls)) as client:
        resp = await client.get("/artifacts/platform%2Fsecret/-/main/x")
    assert resp.status_code == 403
    assert resp.text == "no read on platform/secret"
    assert resp.headers["x-authz-decision-id"] == "d2"
    assert resp.headers["content-type"] == "text/plain"
    assert calls == []


async def test_denial_without_http_status_is_403(fake: FakeAuthorizer) -> None:
    fake.respond(lambda req: CheckResponse(status=RpcStatus(code=grpc.StatusCode.PERMISSION_DENIED.value[0])))
    async with asgi_client(make_app(fake.target)) as client:
        resp = await client.get("/x")
    assert resp.status_code == 403 and resp.content == b""


# -- the service unavailable ------------------------------------------------------------------------------------


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"] == "authz_unavailable"


async def test_closed_port_fails_closed_with_503() -> None:
    calls: list[str] = []
    app = make_app(f"127.0.0.1:{closed_port()}", calls=calls)
    async with asgi_client(app) as client:
        start = time.monotonic()
        resp = await client.get("/x")
        assert time.monotonic() - start < 2
    assert_unavailable(resp)
    assert calls == []


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
async def test_rpc_errors_fail_closed(fake: FakeAuthorizer, code: grpc.StatusCode) -> None:
    fake.fail(code)
    async with asgi_client(make_app(fake.target)) as client:
        assert_unavailable(await client.get("/x"))


async def test_timeout_fails_closed(fake: FakeAuthorizer) -> None:
    fake.allow(account_id=1, username="slow")
    fake.delay = 2.0
    async with asgi_client(make_app(fake.target, timeout=0.2)) as client:
        start = time.monotonic()
        resp = await client.get("/x")
        elapsed = time.monotonic() - start
    assert_unavailable(resp)
    assert elapsed < 1.5
    assert len(fake.requests) == 1


async def test_fail_open_lets_requests_through_unauthenticated(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(f"127.0.0.1:{closed_port()}", fail_open=True)
    with caplog.at_level(logging.WARNING, logger="fastapi_client.authz"):
        async with asgi_client(app) as client:
            first = await client.get("/x", headers={"x-gerrit-account-id": "1", "x-gerrit-username": "admin"})
            second = await client.get("/y")
    assert first.status_code == second.status_code == 200
    assert not [k for k in headers_seen(first) if k.startswith("x-gerrit-")]
    assert first.json()["authz"] == asdict(AuthzIdentity.anonymous())
    assert first.json()["authenticated"] is False and first.json()["scopes"] == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "fail_open" in r.getMessage()]
    assert len(warnings) == 2  # one per request


def undecided() -> CheckResponse:
    """What gerrit-authz answers when Gerrit is unreachable: UNAVAILABLE with the 503 in ``error_response``."""
    return CheckResponse(
        status=RpcStatus(code=grpc.StatusCode.UNAVAILABLE.value[0], message="gerrit_unavailable"),
        error_response=DeniedHttpResponse(
            status=HttpStatus(code=503),
            headers=[
                HeaderValueOption(header=HeaderValue(key="content-type", value="application/json")),
                HeaderValueOption(header=HeaderValue(key="retry-after", value="9")),
            ],
            body='{"error":"gerrit_unavailable","reason":"down","rule":"r","decision_id":"d9"}',
        ),
    )


async def test_undecided_error_response_fails_closed_with_the_services_503(fake: FakeAuthorizer) -> None:
    fake.respond(lambda req: undecided())
    calls: list[str] = []
    async with asgi_client(make_app(fake.target, calls=calls)) as client:
        resp = await client.get("/x")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "9"
    assert resp.json()["error"] == "gerrit_unavailable"
    assert calls == []


async def test_undecided_error_response_is_let_through_only_with_fail_open(
    fake: FakeAuthorizer, caplog: pytest.LogCaptureFixture
) -> None:
    fake.respond(lambda req: undecided())
    with caplog.at_level(logging.WARNING, logger="fastapi_client.authz"):
        async with asgi_client(make_app(fake.target, fail_open=True)) as client:
            resp = await client.get("/x", headers={"x-gerrit-account-id": "1"})
    assert resp.status_code == 200
    assert resp.json()["authz"] == asdict(AuthzIdentity.anonymous())
    assert not [k for k in headers_seen(resp) if k.startswith("x-gerrit-")]
    assert any("gerrit_unavailable" in r.getMessage() for r in caplog.records)


async def test_a_definite_deny_stays_a_deny_with_fail_open(fake: FakeAuthorizer) -> None:
    fake.deny(403, "no")
    async with asgi_client(make_app(fake.target, fail_open=True)) as client:
        assert (await client.get("/x")).status_code == 403
    # A 503 sent as a plain deny (gerrit-authz with ``server.outages: deny``) is a deny too.
    fake.respond(lambda req: CheckResponse(status=undecided().status, denied_response=undecided().error_response))
    async with asgi_client(make_app(fake.target, fail_open=True)) as client:
        resp = await client.get("/x")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "9"


async def test_the_apps_trace_context_goes_in_the_grpc_metadata(fake: FakeAuthorizer) -> None:
    fake.allow(account_id=1, username="alice")
    tracer = TracerProvider().get_tracer("app")
    async with asgi_client(make_app(fake.target)) as client:
        await client.get("/x")  # no current span: no trace metadata
        with tracer.start_as_current_span("app request") as span:
            await client.get("/y")
    assert "traceparent" not in fake.metadata[0]
    ctx = span.get_span_context()
    assert fake.metadata[1]["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


# -- what is not checked ----------------------------------------------------------------------------------------


async def test_excluded_paths_and_prefixes_skip_the_check(fake: FakeAuthorizer) -> None:
    fake.deny(403)
    app = make_app(fake.target, exclude_paths=("/healthz",), exclude_prefixes=("/public/",))
    async with asgi_client(app) as client:
        health = await client.get("/healthz", headers={"x-gerrit-account-id": "1", "x-authz-rule": "x"})
        public = await client.get("/public/logo.png")
        assert fake.requests == []
        assert (await client.get("/healthzz")).status_code == 403
        assert (await client.get("/public")).status_code == 403
        assert (await client.get("/public/%2e%2e/admin")).status_code == 403  # no dot-segment escapes
    assert health.status_code == public.status_code == 200
    assert not [k for k in headers_seen(health) if k.startswith(("x-gerrit-", "x-authz-"))]
    assert health.json()["authz"] is None and health.json()["authenticated"] is False
    assert len(fake.requests) == 3


async def test_cors_preflight_switch(fake: FakeAuthorizer) -> None:
    fake.deny(401)
    preflight = {"origin": "https://ui.example", "access-control-request-method": "POST"}
    async with asgi_client(make_app(fake.target, allow_cors_preflight=True)) as client:
        assert (await client.options("/deploy/1", headers=preflight)).status_code == 200
        assert fake.requests == []
        assert (await client.options("/deploy/1")).status_code == 401  # a plain OPTIONS is checked
        assert (await client.post("/deploy/1", headers=preflight)).status_code == 401
    async with asgi_client(make_app(fake.target)) as client:
        assert (await client.options("/deploy/1", headers=preflight)).status_code == 401


# -- lifespan and channels --------------------------------------------------------------------------------------


async def test_lifespan_passes_through_and_closes_the_channel(fake: FakeAuthorizer) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    fake.allow()
    app = make_app(fake.target)
    app.router.lifespan_context = app_lifespan
    async with lifespan(app) as messages, asgi_client(app) as client:
        assert events == ["startup"]
        assert (await client.get("/x")).status_code == 200
        middleware = middleware_of(app)
        channel = middleware.channels.channel()
        assert channel is not None and len(middleware.channels) == 1
        assert (await client.get("/y")).status_code == 200
        assert middleware.channels.channel() is channel  # reused, not one per request
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(middleware.channels) == 0
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN


async def test_one_channel_per_event_loop(fake: FakeAuthorizer) -> None:
    fake.allow()
    app = make_app(fake.target)
    async with asgi_client(app) as client:
        assert (await client.get("/x")).status_code == 200
    middleware = middleware_of(app)
    here = middleware.channels.channel()

    async def on_another_loop() -> tuple[int, Any]:
        async with lifespan(app), asgi_client(app) as other:
            status = (await other.get("/y")).status_code
            return status, middleware.channels.channel()

    status, there = await asyncio.to_thread(asyncio.run, on_another_loop())
    assert status == 200
    assert there is not None and there is not here
    assert middleware.channels.channel() is here
    assert len(middleware.channels) == 1  # the other loop's channel was closed by its lifespan shutdown
    await middleware.channels.close()


# -- Starlette auth and the FastAPI dependencies ----------------------------------------------------------------


async def test_request_user_and_requires_authenticated(fake: FakeAuthorizer) -> None:
    app = make_app(fake.target)
    async with asgi_client(app) as client:
        fake.allow(account_id=1000005, username="erin")
        resp = await client.get("/needs-auth")
        assert resp.status_code == 200
        assert resp.json() == {"user": "erin", "identity": "1000005"}
        fake.allow(rule="health")  # allowed without an account: requires() refuses
        assert (await client.get("/needs-auth")).status_code == 403
    assert isinstance(AuthzUser(None), AuthzUser) and not AuthzUser(None).is_authenticated


async def test_current_and_optional_identity(fake: FakeAuthorizer) -> None:
    app = make_app(fake.target)
    async with asgi_client(app) as client:
        fake.allow(rule="anyone")
        anonymous = await client.get("/me")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="gerrit-authz"'
        assert (await client.get("/maybe")).json() is None
        fake.allow(account_id=1000002, username="bob", email="bob@example.com", rule="signed-in")
        me = (await client.get("/me")).json()
        assert me["username"] == "bob" and me["account_id"] == 1000002 and me["authenticated"] is True
        assert (await client.get("/maybe")).json()["username"] == "bob"


# -- websockets and other scopes, at the ASGI level --------------------------------------------------------------


def ws_scope(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"token=x",
        "root_path": "",
        "headers": [
            (b"host", b"svc.example"),
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"x-gerrit-account-id", b"1"),
        ],
        "client": ("198.51.100.1", 40000),
        "server": ("svc.example", 443),
        "subprotocols": [],
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def run_ws(middleware: AuthzMiddleware, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


async def test_websocket_checks_at_asgi_level(fake: FakeAuthorizer) -> None:
    seen: list[dict[str, Any]] = []

    async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "websocket.accept", "headers": []})

    middleware = AuthzMiddleware(ws_app, target=fake.target)
    fake.allow(account_id=9, username="wes", response_headers={"x-authz-cache": "miss"})
    sent = await run_ws(middleware, ws_scope())
    http = fake.last_request.attributes.request.http
    assert (http.method, http.scheme, http.path, http.host) == ("GET", "https", "/ws?token=x", "svc.example")
    assert http.headers["upgrade"] == "websocket" and http.headers["connection"] == "Upgrade"
    assert seen[0]["state"]["authz"].username == "wes"
    assert dict(seen[0]["headers"])[b"x-gerrit-account-id"] == b"9"
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-authz-cache", b"miss")]}]

    fake.deny(403, "no")
    assert await run_ws(middleware, ws_scope()) == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    with_ext = await run_ws(middleware, ws_scope({"websocket.http.response": {}}))
    assert with_ext[0]["type"] == "websocket.http.response.start" and with_ext[0]["status"] == 403
    assert with_ext[1] == {"type": "websocket.http.response.body", "body": b"no"}
    fake.fail()
    assert (await run_ws(middleware, ws_scope()))[0]["code"] == 1013  # try again later
    assert len(seen) == 1
    await middleware.channels.close()


async def test_checked_path_is_the_path_the_app_routes_on(fake: FakeAuthorizer) -> None:
    """raw_path is used only while it agrees with path: a rewritten path is what gets authorized."""
    routed: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AuthzMiddleware(app, target=fake.target)
    fake.allow()
    base = {"type": "http", "method": "GET", "scheme": "https", "query_string": b"", "headers": [(b"host", b"h")]}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    rewritten = {**base, "path": "/admin/users", "raw_path": b"/public/users", "http_version": "2"}
    await middleware(rewritten, None, send)  # type: ignore[arg-type]
    no_raw = {**base, "path": "/a b/c%d", "http_version": "1.0"}
    await middleware(no_raw, None, send)  # type: ignore[arg-type]
    first, second = (r.attributes.request.http for r in fake.requests)
    assert (first.path, first.protocol, first.scheme) == ("/admin/users", "HTTP/2", "https")
    assert (second.path, second.protocol) == ("/a%20b/c%25d", "HTTP/1.0")
    assert routed == ["/admin/users", "/a b/c%d"]
    await middleware.channels.close()


async def test_other_scope_types_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = AuthzMiddleware(app, target=f"127.0.0.1:{closed_port()}")
    await middleware({"type": "custom.protocol"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom.protocol"] and len(middleware.channels) == 0


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AuthzMiddleware(FastAPI(), timeout=0)
