"""Real Envoy at the seams between routers: a WSGI upstream never reads a client's ``x_gerrit_account_id``, and
``POST /deploy%2F12`` never reaches the deploy handler past the ``/deploy/`` route's context extensions.

Both are run on the example bootstrap *and* on a weakened copy (underscore headers allowed; escaped slashes kept),
so that what is proven is gerrit-authz's own answer, not only Envoy's front door.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from _support.asgi import uvicorn_on_loop
from _support.authz import authz_on_double, double_user, example_config_data
from _support.envoy import EnvoyProcess, example_bootstrap, hcm_of, listener_named, point_cluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.gerrit_double import account_id

pytestmark = [pytest.mark.envoy]


@asynccontextmanager
async def envoy_for(bootstrap: dict[str, Any], authz: str, upstream: str, workdir: Path) -> AsyncIterator[str]:
    point_cluster(bootstrap, "gerrit_authz", authz)
    point_cluster(bootstrap, "upstream", upstream)
    envoy = await asyncio.to_thread(EnvoyProcess(bootstrap, workdir).start)
    try:
        yield envoy.url()
    finally:
        await asyncio.to_thread(envoy.stop)


def ingress(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return hcm_of(listener_named(bootstrap, "ingress"))


# ------------------------------------------------------------------------------------------------ WSGI upstream


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def wsgi_upstream(environs: list[dict[str, str]]) -> Iterator[str]:
    """wsgiref (``HTTP_`` + upper-case, ``-`` and ``_`` alike) on a free loopback port, recording each environ."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environs.append({k: v for k, v in environ.items() if k.startswith("HTTP_X_")})
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="wsgiref", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


SPOOF = {"x_gerrit_account_id": "1", "x_authz_rule": "admin-api", "X-Gerrit_Username": "admin"}


@pytest.mark.parametrize("underscores", ["REJECT_REQUEST", "ALLOW"])
async def test_underscore_identity_headers_never_reach_the_wsgi_environ(tmp_path: Path, underscores: str) -> None:
    environs: list[dict[str, str]] = []
    bootstrap = example_bootstrap()
    assert ingress(bootstrap)["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    ingress(bootstrap)["common_http_protocol_options"]["headers_with_underscores_action"] = underscores
    with wsgi_upstream(environs) as upstream:
        async with (
            authz_on_double(tmp_path) as authz,
            envoy_for(bootstrap, authz, upstream, tmp_path / "envoy") as base,
            httpx.AsyncClient(base_url=base, timeout=15) as client,
        ):
            anonymous = await client.get("/healthz", headers=SPOOF)  # `anyone`: no identity at all
            alice = await client.get("/dashboard/me", headers={**SPOOF, **double_user(0)})
    if underscores == "REJECT_REQUEST":
        assert anonymous.status_code == alice.status_code == 400  # Envoy's front door
        assert environs == []
        return
    assert anonymous.status_code == alice.status_code == 200, (anonymous.text, alice.text)
    anon_env, alice_env = environs
    assert "HTTP_X_GERRIT_ACCOUNT_ID" not in anon_env and "HTTP_X_GERRIT_USERNAME" not in anon_env
    assert anon_env["HTTP_X_AUTHZ_RULE"] == "health"
    assert alice_env["HTTP_X_GERRIT_ACCOUNT_ID"] == str(account_id(0))  # not "1,1000000"
    assert alice_env["HTTP_X_GERRIT_USERNAME"] == "alice"
    assert alice_env["HTTP_X_AUTHZ_RULE"] == "dashboard"


# ------------------------------------------------------------------------------- /deploy%2F12 past the route


def deploy_rules() -> list[Any]:
    """The example's rules with the deploy rule bound to Envoy's /deploy/ route, and (the attack's condition) a
    permissive rule below it, as a policy written before this hardening would have."""
    rules: list[dict[str, Any]] = []
    for rule in example_config_data()["rules"]:
        if rule["name"] == "deploy":
            rule = {**rule, "match": {**rule["match"], "context_extensions": {"route": "deploy"}}}
        rules.append(rule)
    rules.append({"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"})
    return rules


def deploy_app(runs: list[str]) -> Starlette:
    async def deploy(request: Request) -> JSONResponse:
        runs.append(request.headers.get("x-authz-rule", ""))
        return JSONResponse({"deploying": request.path_params["change"]})

    # Starlette decodes %2F before routing: /deploy%2F12 is /deploy/12 here.
    return Starlette(routes=[Route("/deploy/{change}", deploy, methods=["POST"])])


@pytest.mark.parametrize("escaped_slashes", ["UNESCAPE_AND_REDIRECT", "KEEP_UNCHANGED"])
async def test_an_encoded_slash_never_dodges_the_deploy_route(tmp_path: Path, escaped_slashes: str) -> None:
    runs: list[str] = []
    bootstrap = example_bootstrap()
    assert ingress(bootstrap)["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    ingress(bootstrap)["path_with_escaped_slashes_action"] = escaped_slashes
    user = double_user(1)  # signed in, not a release manager
    responses = {}
    async with (
        authz_on_double(tmp_path, deploy_rules()) as authz,
        uvicorn_on_loop(deploy_app(runs)) as upstream,
        envoy_for(bootstrap, authz, upstream, tmp_path / "envoy") as base,
        httpx.AsyncClient(timeout=15, follow_redirects=True) as client,
    ):
        for path in ("/deploy%2F12", "/deploy%2f12", "/deploy/12"):
            url = httpx.URL(base).copy_with(raw_path=path.encode())
            responses[path] = await client.post(url, headers=user)
    assert runs == [], runs  # the deploy handler never ran for this caller
    assert responses["/deploy/12"].status_code == 403
    assert responses["/deploy/12"].json()["rule"] == "deploy"
    for path in ("/deploy%2F12", "/deploy%2f12"):
        response = responses[path]
        if escaped_slashes == "KEEP_UNCHANGED":
            # Envoy routed on "/deploy%2F12" (not /deploy/): no context extensions; gerrit-authz refuses.
            assert response.status_code == 400 and response.json()["error"] == "ambiguous_path", response.text
        else:
            # Envoy redirected to /deploy/12 (the route with the extensions), where the deploy rule decides.
            assert response.history and response.history[0].status_code in (301, 302, 307, 308)
            assert response.status_code == 403 and response.json()["rule"] == "deploy", response.text


async def test_a_release_manager_still_deploys_through_the_route(tmp_path: Path) -> None:
    runs: list[str] = []
    async with (
        authz_on_double(tmp_path, deploy_rules()) as authz,
        uvicorn_on_loop(deploy_app(runs)) as upstream,
        envoy_for(example_bootstrap(), authz, upstream, tmp_path / "envoy") as base,
        httpx.AsyncClient(base_url=base, timeout=15) as client,
    ):
        response = await client.post("/deploy/12", headers=double_user(0))
    assert response.status_code == 200, response.text
    assert runs == ["deploy"]
