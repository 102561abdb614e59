"""The middleware strips identity headers in every spelling: a WSGI app behind it (Starlette's ``WSGIMiddleware``)
never reads a client-sent ``x_gerrit_account_id`` as ``HTTP_X_GERRIT_ACCOUNT_ID``."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest_asyncio
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, OkHttpResponse
from fastapi_support import asgi_client
from google.rpc.status_pb2 import Status as RpcStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.checkrequest import IDENTITY_HEADERS, is_identity_header
from fastapi_client import AuthzMiddleware
from fastapi_client._request import strip_protected
from fastapi_client.testing import FakeAuthorizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # deprecated in favour of a2wsgi, still what many apps run
    from starlette.middleware.wsgi import WSGIMiddleware


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAuthorizer]:
    async with FakeAuthorizer() as f:
        yield f


def wsgi_recorder(seen: list[dict[str, str]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append({k: v for k, v in environ.items() if k.startswith("HTTP_X_")})
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    return app


def protected_app(target: str, seen: list[dict[str, str]]) -> AuthzMiddleware:
    return AuthzMiddleware(WSGIMiddleware(wsgi_recorder(seen)), target=target)


def spelling(name: str) -> st.SearchStrategy[str]:
    parts = [st.sampled_from(["-", "_"]) if c == "-" else st.sampled_from([c.lower(), c.upper()]) for c in name]
    return st.tuples(*parts).map("".join)


async def test_underscore_spelling_never_reaches_the_wsgi_environ(fake: FakeAuthorizer) -> None:
    fake.allow(account_id=1000001, username="bob", rule="health")
    seen: list[dict[str, str]] = []
    async with asgi_client(protected_app(fake.target, seen)) as client:
        spoofed = {"x_gerrit_account_id": "1", "X_Authz_Rule": "admin-api", "x-gerrit_username": "admin"}
        assert (await client.get("/healthz", headers=spoofed)).status_code == 200
    assert seen[0]["HTTP_X_GERRIT_ACCOUNT_ID"] == "1000001"  # the service's value alone, not "1,1000001"
    assert seen[0]["HTTP_X_GERRIT_USERNAME"] == "bob"
    assert seen[0]["HTTP_X_AUTHZ_RULE"] == "health"


async def test_without_identity_no_spelling_passes(fake: FakeAuthorizer) -> None:
    # An answer that sets and removes nothing (another authorizer): the middleware's own stripping is all there is.
    fake.respond(lambda req: CheckResponse(status=RpcStatus(code=0), ok_response=OkHttpResponse()))
    seen: list[dict[str, str]] = []
    async with asgi_client(protected_app(fake.target, seen)) as client:
        headers = {"x_gerrit_account_id": "1", "X-GERRIT_EMAIL": "boss@example.com", "x-other_thing": "kept"}
        assert (await client.get("/x", headers=headers)).status_code == 200
    assert len(seen) == 1
    assert seen[0]["HTTP_X_OTHER_THING"] == "kept"
    assert not [k for k in seen[0] if k.startswith(("HTTP_X_GERRIT_", "HTTP_X_AUTHZ_"))]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(IDENTITY_HEADERS).flatmap(spelling), min_size=1, max_size=5))
def test_strip_protected_drops_every_spelling(names: list[str]) -> None:
    raw = [(n.encode(), b"spoof") for n in names] + [(b"x-gerritx", b"kept"), (b"accept", b"*/*")]
    kept = strip_protected(raw)
    assert kept == [(b"x-gerritx", b"kept"), (b"accept", b"*/*")]
    assert not any(is_identity_header(k.decode()) for k, _ in kept)
