"""fastapi_client.testing.FakeAuthorizer: scripting, recording, and use from async and synchronous tests."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from _support.authz import check_request, check_stub
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from fastapi import FastAPI, Request
from fastapi_support import asgi_client, middleware_of

from fastapi_client import AuthzIdentity, AuthzMiddleware, CurrentIdentity
from fastapi_client.testing import FakeAuthorizer, allow_response, deny_response


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAuthorizer]:
    async with FakeAuthorizer() as f:
        yield f


async def check(fake: FakeAuthorizer, request: CheckRequest | None = None) -> CheckResponse:
    async with check_stub(fake.target) as stub:
        response: CheckResponse = await stub.Check(request or check_request("GET", "/x"), timeout=5)
    return response


def upstream(resp: CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def denied_headers(resp: CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.denied_response.headers}


async def test_unscripted_fake_denies(fake: FakeAuthorizer) -> None:
    resp = await check(fake)
    assert resp.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert resp.denied_response.status.code == 403
    assert json.loads(resp.denied_response.body)["error"] == "not_scripted"


async def test_allow_mirrors_the_service(fake: FakeAuthorizer) -> None:
    fake.allow(AuthzIdentity(account_id=1000001, username="bob", email="bob@example.com", rule="read"))
    request = check_request("GET", "/x", {"x-gerrit-account-id": "1", "x-gerrit-role": "admin", "x_gerrit_team": "t"})
    resp = await check(fake, request)
    assert resp.status.code == 0
    headers = upstream(resp)
    assert headers["x-gerrit-account-id"] == "1000001"
    assert headers["x-gerrit-username"] == "bob" and headers["x-gerrit-email"] == "bob@example.com"
    assert headers["x-authz-rule"] == "read" and headers["x-authz-decision-id"]
    # Set ones are overwritten, not removed; every other spelling an upstream reads as an identity header is removed.
    assert set(resp.ok_response.headers_to_remove) == {"x-gerrit-role", "x_gerrit_team"}


async def test_deny_defaults_follow_the_contract(fake: FakeAuthorizer) -> None:
    fake.deny(401)
    resp = await check(fake)
    assert resp.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert denied_headers(resp)["www-authenticate"] == 'Bearer realm="gerrit-authz"'
    assert set(json.loads(resp.denied_response.body)) == {"error", "reason", "rule", "decision_id"}
    fake.deny(503)
    resp = await check(fake)
    assert resp.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert denied_headers(resp)["retry-after"] == "5"
    fake.deny(403, b"plain", {"X-Extra": "1"})
    resp = await check(fake)
    assert resp.denied_response.body == "plain"
    assert denied_headers(resp) == {"content-type": "text/plain; charset=utf-8", "x-extra": "1"}


async def test_respond_with_sync_and_async_callables(fake: FakeAuthorizer) -> None:
    fake.respond(lambda req: deny_response(403) if "/admin" in req.attributes.request.http.path else allow_response())
    assert (await check(fake, check_request("GET", "/admin/x"))).denied_response.status.code == 403
    assert (await check(fake, check_request("GET", "/ok"))).status.code == 0

    async def handler(req: CheckRequest) -> CheckResponse:
        return allow_response(req, AuthzIdentity(account_id=5, username="eve", rule="async"))

    fake.respond(handler)
    assert upstream(await check(fake))["x-gerrit-username"] == "eve"


async def test_fail_and_records_requests(fake: FakeAuthorizer) -> None:
    fake.fail(grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(fake, check_request("POST", "/deploy/1"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    fake.allow()  # scripting again ends the failure
    assert (await check(fake, check_request("GET", "/second"))).status.code == 0
    assert [r.attributes.request.http.path for r in fake.requests] == ["/deploy/1", "/second"]
    assert fake.last_request.attributes.request.http.path == "/second"
    fake.clear()
    assert fake.requests == []


async def test_target_needs_a_started_fake() -> None:
    fake = FakeAuthorizer()
    with pytest.raises(RuntimeError):
        _ = fake.target
    async with fake:
        assert fake.target.startswith("127.0.0.1:")


async def test_fake_behind_the_middleware(fake: FakeAuthorizer) -> None:
    app = FastAPI()

    @app.get("/me")
    async def me(who: CurrentIdentity) -> dict[str, Any]:
        return {"username": who.username}

    app.add_middleware(AuthzMiddleware, target=fake.target)
    fake.allow(account_id=1000002, username="bob")
    async with asgi_client(app) as client:
        assert (await client.get("/me")).json() == {"username": "bob"}
    assert fake.last_request.attributes.request.http.path == "/me"
    await middleware_of(app).channels.close()


def test_synchronous_use_with_starlette_testclient() -> None:
    """``with FakeAuthorizer()`` serves from a thread; TestClient runs the app on a loop of its own."""
    with warnings.catch_warnings():
        # Starlette 1.x deprecates its httpx-based TestClient in favour of httpx2, which is not installed here.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    app = FastAPI()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {"user": request.user.display_name, "rule": request.state.authz.rule}

    with FakeAuthorizer() as fake:
        app.add_middleware(AuthzMiddleware, target=fake.target)
        fake.allow(account_id=3, username="carol", rule="signed-in")
        with TestClient(app) as client:  # runs the lifespan: the middleware's channel is closed at the end
            assert client.get("/whoami").json() == {"user": "carol", "rule": "signed-in"}
            fake.deny(401)
            denied = client.get("/whoami")
            assert denied.status_code == 401 and "www-authenticate" in denied.headers
        assert len(fake.requests) == 2
        assert len(middleware_of(app).channels) == 0
