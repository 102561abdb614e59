"""Envoy (the real binary, running ``examples/envoy/envoy.yaml``) + gerrit-authz (in-process) + real Gerrit + an
echo upstream: plain HTTP requests through Envoy, and what the client and the upstream see.

Envoy behaviours pinned here (Envoy 1.40):
- ``normalize_path: true`` resolves dot-segments *before* ext_authz and routing, including encoded ones
  (``/a/%2e%2e/b`` -> ``/b``), and decodes escaped unreserved characters (``%61`` -> ``a``); ``%2F``/``%2f``
  (and ``%5C``) are unescaped with a redirect (``UNESCAPE_AND_REDIRECT``) before ext_authz is asked. So through
  the example listener gerrit-authz never sees a dot-segment: the 400 for one is reached here on a test-only
  listener with ``normalize_path: false``.
- ``headers_with_underscores_action: REJECT_REQUEST``: a client-sent ``x_gerrit_account_id`` is a 400 from Envoy.
- Without ``normalize_path`` the route is chosen on the raw path: ``/static/%2e%2e/x`` takes the unchecked
  ``/static/`` route, and the upstream receives the dot-segment. That is why the example normalises.
- httpx removes literal ``.``/``..`` segments client-side, so the tests send encoded ones.
- On a route with ext_authz disabled nothing strips client-sent ``x-gerrit-*``; the example removes the known
  identity headers there with ``request_headers_to_remove``.
- gerrit-authz unreachable: ``status_on_error`` 503 with an empty body (no ``retry-after``, no JSON).
- jwt_authn rejects a bad token itself (401, body ``Jwt verification fails``) before ext_authz is asked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from _support.authz import basic, example_config_data, make_config, running_server
from _support.envoy import (
    EchoUpstream,
    EnvoyProcess,
    add_listener_copy,
    example_bootstrap,
    hcm_of,
    listener_named,
    point_cluster,
)
from _support.oidc import SigningKey, make_claims
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

from authz_server._server import AuthzServer
from authz_server.config import Config

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

ARTIFACT = "/artifacts/platform/build/-/main/out/app.tar"  # {project:path}: the project is platform/build
SECRET_ARTIFACT = "/artifacts/platform/secret/-/main/out/app.tar"
DOT_SEGMENT = "/artifacts/platform/build/-/main/%2e%2e/main/x"
JWT_ISSUER = "https://issuer.test.invalid"
JWT_AUDIENCE = "gerrit-authz-demo"
JWT_FILTER = "envoy.filters.http.jwt_authn"
IDENTITY_HEADERS = ("x-gerrit-account-id", "x-gerrit-username", "x-gerrit-email", "x-authz-rule", "x-authz-decision-id")

# The example's rules, plus one that matches only on the context_extensions of the example's /deploy/ route.
ENVOY_ROUTE_RULE = {
    "name": "envoy-deploy-route",
    "match": {"methods": ["GET"], "context_extensions": {"route": "deploy", "environment": "production"}},
    "require": "authenticated",
}


def authz_config(gerrit: Any, tmp: Path, **overrides: Any) -> Config:
    secret = tmp / "gerrit-password"
    secret.write_text(gerrit.org.bot.http_password)
    identity = [{"envoy_jwt_metadata": {"issuer": JWT_ISSUER}}, {"gerrit_http_credentials": {}}]
    rules = [ENVOY_ROUTE_RULE, *example_config_data()["rules"]]
    return make_config(gerrit.server.url, secret, identity=identity, rules=rules, **overrides)


def bootstrap_for(authz: AuthzServer, echo: EchoUpstream) -> dict[str, Any]:
    """The example bootstrap pointed at this authz server and echo upstream, plus a test-only listener ``raw``
    identical to ``ingress`` except that it does not normalise paths."""
    bootstrap = example_bootstrap()
    point_cluster(bootstrap, "gerrit_authz", authz.address)
    point_cluster(bootstrap, "upstream", echo.address)
    raw = hcm_of(add_listener_copy(bootstrap, "ingress", "raw"))
    raw["normalize_path"] = False
    raw["merge_slashes"] = False
    return bootstrap


async def start_envoy(bootstrap: dict[str, Any], workdir: Path) -> EnvoyProcess:
    return await asyncio.to_thread(EnvoyProcess(bootstrap, workdir).start)


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzServer]:
    async with running_server(authz_config(gerrit, tmp_path_factory.mktemp("authz"))) as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def envoy(
    authz: AuthzServer, echo: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EnvoyProcess]:
    proc = await start_envoy(bootstrap_for(authz, echo), tmp_path_factory.mktemp("envoy"))
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def send(
    envoy: EnvoyProcess,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    listener: str = "ingress",
) -> httpx.Response:
    """One request through Envoy; ``path`` goes on the wire exactly as written (escapes kept)."""
    url = httpx.URL(envoy.url(listener)).copy_with(raw_path=path.encode())
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.request(method, url, headers=headers)


def as_user(user: Any) -> dict[str, str]:
    return {"authorization": basic(user.username, user.http_password)}


def upstream(resp: httpx.Response) -> dict[str, Any]:
    """What the echo upstream received; fails unless the response came from it."""
    assert resp.status_code == 200, (resp.status_code, dict(resp.headers), resp.text)
    body: dict[str, Any] = resp.json()
    assert set(body) >= {"raw_path", "headers"}, body
    return body


def our_deny(resp: httpx.Response, status: int) -> dict[str, Any]:
    """gerrit-authz's denied response, as Envoy relayed it to the client."""
    assert resp.status_code == status, (resp.status_code, dict(resp.headers), resp.text)
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error", "reason", "rule", "decision_id"}, body
    assert resp.headers["x-authz-decision-id"] == body["decision_id"]
    return body


def checks(envoy: EnvoyProcess, listener: str = "ingress") -> int:
    """How many Checks Envoy's ext_authz filter completed on a listener (ok + denied + error)."""
    stats = envoy.stats(f"http.{listener}.ext_authz.")
    return sum(stats[f"http.{listener}.ext_authz.{k}"] for k in ("ok", "denied", "error"))


# --------------------------------------------------------------------------------------------------------- tests


async def test_allowed_request_reaches_upstream_with_identity(envoy: EnvoyProcess, gerrit: Any) -> None:
    carol = gerrit.org.carol
    seen = upstream(await send(envoy, ARTIFACT + "?x=1", as_user(carol)))
    assert seen["raw_path"] == ARTIFACT
    assert seen["query"] == "x=1"
    headers = seen["headers"]
    assert headers["x-gerrit-account-id"] == str(carol.account_id)
    assert headers["x-gerrit-username"] == "carol"
    assert headers["x-gerrit-email"] == carol.email
    assert headers["x-authz-rule"] == "read-artifacts"
    assert len(headers["x-authz-decision-id"]) >= 8
    assert headers["authorization"].startswith("Basic ")  # Envoy forwards the credential; gerrit-authz keeps it


async def test_spoofed_identity_headers_never_reach_upstream(envoy: EnvoyProcess, gerrit: Any) -> None:
    bob = gerrit.org.bob
    spoof = {"x-gerrit-account-id": "1", "X-Gerrit-Anything": "admin", "x-authz-rule": "spoofed", "x-authz-x": "y"}
    seen = upstream(await send(envoy, ARTIFACT, {**as_user(bob), **spoof}))
    headers = seen["headers"]
    assert headers["x-gerrit-account-id"] == str(bob.account_id)
    assert headers["x-authz-rule"] == "read-artifacts"
    assert "x-gerrit-anything" not in headers and "x-authz-x" not in headers
    assert [k for k, _ in seen["raw_headers"]].count("x-gerrit-account-id") == 1
    # Anonymous on a rule that needs no identity: the spoofed identity is removed, not replaced.
    anon = upstream(await send(envoy, "/healthz", spoof))["headers"]
    assert anon["x-authz-rule"] == "health"
    assert not {"x-gerrit-account-id", "x-gerrit-anything", "x-authz-x"} & set(anon)
    # An underscore spelling (WSGI reads it as HTTP_X_GERRIT_ACCOUNT_ID) is refused at Envoy's front door.
    before = checks(envoy)
    assert (await send(envoy, "/healthz", {"x_gerrit_account_id": "1"})).status_code == 400
    assert checks(envoy) == before


async def test_unauthenticated_is_401_with_challenge_and_json(envoy: EnvoyProcess, gerrit: Any, echo: Any) -> None:
    before = echo.requests
    resp = await send(envoy, "/dashboard")
    body = our_deny(resp, 401)
    # One challenge per configured kind, each its own header line, in the order of the identity sources:
    # envoy_jwt_metadata (a token) then gerrit_http_credentials.
    assert resp.headers.get_list("www-authenticate") == ['Bearer realm="gerrit-authz"', 'Basic realm="gerrit-authz"']
    assert body["rule"] == "dashboard"
    bad = await send(envoy, "/dashboard", {"authorization": basic("bob", "not-his-password")})
    assert our_deny(bad, 401)["error"] == "invalid_credentials"
    # A bad password is no bad token: Bearer without error="invalid_token", and Basic offered again.
    assert bad.headers.get_list("www-authenticate") == ['Bearer realm="gerrit-authz"', 'Basic realm="gerrit-authz"']
    assert "not-his-password" not in bad.text
    assert echo.requests == before  # denied requests never reach the upstream


async def test_curl_anyauth_finds_basic_in_the_challenge(envoy: EnvoyProcess, gerrit: Any) -> None:
    """curl -u sends Basic up front; --anyauth sends nothing first and answers only a scheme the 401 offers."""
    bob = gerrit.org.bob

    async def curl(*args: str) -> str:
        # In a thread: gerrit-authz answers Envoy from this very event loop.
        out = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "15", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    url = envoy.url("ingress") + "/dashboard"
    wrong = await curl("-u", f"{bob.username}:not-his-password", url)
    assert wrong.startswith("HTTP/1.1 401"), wrong
    challenges = [line.split(":", 1)[1].strip() for line in wrong.splitlines() if line.lower().startswith("www-auth")]
    assert 'Basic realm="gerrit-authz"' in challenges, wrong
    negotiated = await curl("--anyauth", "-u", f"{bob.username}:{bob.http_password}", url)
    statuses = [line.split()[1] for line in negotiated.splitlines() if line.startswith("HTTP/")]
    assert statuses == ["401", "200"], negotiated  # asked, offered Basic, answered it


async def test_forbidden_is_403_json(envoy: EnvoyProcess, gerrit: Any) -> None:
    body = our_deny(await send(envoy, SECRET_ARTIFACT, as_user(gerrit.org.carol)), 403)
    assert body["error"] == "requirement_failed"
    assert body["rule"] == "read-artifacts"
    assert "platform/secret" in body["reason"]


async def test_dot_segments(envoy: EnvoyProcess, gerrit: Any) -> None:
    bob = as_user(gerrit.org.bob)
    # Example listener: Envoy resolves the encoded dot-segment before ext_authz, so gerrit-authz and the
    # upstream both see /artifacts/platform/build/-/main/x.
    seen = upstream(await send(envoy, DOT_SEGMENT, bob))
    assert seen["raw_path"] == "/artifacts/platform/build/-/main/x"
    assert seen["headers"]["x-authz-rule"] == "read-artifacts"
    # An encoded backslash is unescaped by a redirect, never passed to ext_authz or the upstream as %5C.
    before = checks(envoy)
    redirect = await send(envoy, "/artifacts/platform/build/-/main/..%5C..%5Cx", bob)
    assert redirect.is_redirect and "%5C" not in redirect.headers["location"].upper()
    assert checks(envoy) == before
    # Without normalize_path (test-only listener) the dot-segment reaches gerrit-authz: 400, its JSON.
    body = our_deny(await send(envoy, DOT_SEGMENT, bob, listener="raw"), 400)
    assert body["error"] == "malformed_path" and "dot-segment" in body["reason"]
    # ... and routing would be fooled: /static/%2e%2e/ takes the unchecked /static/ route there, while the
    # example listener routes the normalised /dashboard through ext_authz.
    assert upstream(await send(envoy, "/static/%2e%2e/dashboard", listener="raw"))["raw_path"] == (
        "/static/%2e%2e/dashboard"
    )
    our_deny(await send(envoy, "/static/%2e%2e/dashboard"), 401)


async def test_a_project_with_a_slash_and_the_encoded_spelling(envoy: EnvoyProcess, gerrit: Any) -> None:
    bob, carol = as_user(gerrit.org.bob), as_user(gerrit.org.carol)
    assert upstream(await send(envoy, ARTIFACT, bob, method="PUT"))["headers"]["x-authz-rule"] == "upload-artifacts"
    body = our_deny(await send(envoy, ARTIFACT, carol, method="PUT"), 403)
    assert "platform/build" in body["reason"] and "push" in body["reason"]
    before = checks(envoy)
    for escaped in ("platform%2Fbuild", "platform%2fbuild"):
        # UNESCAPE_AND_REDIRECT: a redirect to the plain-slash path, before ext_authz; the same project either way.
        redirect = await send(envoy, f"/artifacts/{escaped}/-/main/out/app.tar", carol, method="PUT")
        assert redirect.status_code == 307 and redirect.headers["location"].endswith(ARTIFACT), redirect.headers
    assert checks(envoy) == before


async def test_route_context_extensions_reach_the_service(envoy: EnvoyProcess, gerrit: Any) -> None:
    alice = as_user(gerrit.org.alice)
    seen = upstream(await send(envoy, "/deploy/status", alice))
    assert seen["headers"]["x-authz-rule"] == "envoy-deploy-route"
    # The same request on another route carries no context_extensions: the rule does not match, and no other
    # rule names the path (the example has no catch-all).
    assert our_deny(await send(envoy, "/deployments/status", alice), 403)["rule"] == ""
    # An encoded slash cannot dodge the /deploy/ route: Envoy redirects to the path that takes it.
    assert (await send(envoy, "/deploy%2Fstatus", alice)).headers["location"].endswith("/deploy/status")
    # POST /deploy/{change} still reaches the example's deploy rule (GET-only rule above).
    merged = gerrit.org.change_merged.number
    assert upstream(await send(envoy, f"/deploy/{merged}", alice, method="POST"))["headers"]["x-authz-rule"] == (
        "deploy"
    )


async def test_route_with_ext_authz_disabled_skips_the_check(envoy: EnvoyProcess) -> None:
    before = checks(envoy)
    spoof = {"x-gerrit-account-id": "1", "x-authz-rule": "spoofed", "x-gerrit-other": "kept"}
    seen = upstream(await send(envoy, "/static/app.css", spoof))
    assert seen["raw_path"] == "/static/app.css"
    assert checks(envoy) == before
    # (ext_authz.disabled counts filter_enabled/deny_at_disable, not routes with ext_authz disabled: it stays 0.)
    # No Check, so nothing of gerrit-authz's: the route's request_headers_to_remove drops the known identity
    # headers; any other client-sent x-gerrit-* passes (an app must not trust them on unchecked routes).
    assert not set(IDENTITY_HEADERS) & set(seen["headers"])
    assert seen["headers"]["x-gerrit-other"] == "kept"


async def test_jwt_authn_payload_is_the_identity(
    authz: AuthzServer, echo: EchoUpstream, gerrit: Any, tmp_path: Path
) -> None:
    key, other = SigningKey.rsa(kid="k1"), SigningKey.rsa(kid="k1")
    bootstrap = bootstrap_for(authz, echo)
    ingress = hcm_of(listener_named(bootstrap, "ingress"))
    ingress["http_filters"].insert(
        0,
        {
            "name": JWT_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "test": {
                        "issuer": JWT_ISSUER,
                        "audiences": [JWT_AUDIENCE],
                        "local_jwks": {"inline_string": json.dumps({"keys": [key.public_jwk(with_alg=True)]})},
                        "payload_in_metadata": "jwt_payload",
                        "forward": True,
                    }
                },
                # A valid JWT is required when one is sent; requests without one go on (Basic still works).
                "rules": [
                    {
                        "match": {"prefix": "/"},
                        "requires": {
                            "requires_any": {"requirements": [{"provider_name": "test"}, {"allow_missing": {}}]}
                        },
                    }
                ],
            },
        },
    )
    proc = await start_envoy(bootstrap, tmp_path)
    try:
        alice = gerrit.org.alice
        claims = make_claims(JWT_ISSUER, JWT_AUDIENCE, now=time.time(), sub="alice-sub", email=alice.email)
        seen = upstream(await send(proc, "/dashboard", {"authorization": "Bearer " + key.sign(claims)}))
        headers = seen["headers"]
        assert headers["x-gerrit-account-id"] == str(alice.account_id)
        assert headers["x-gerrit-username"] == "alice"
        assert headers["x-authz-rule"] == "dashboard"
        assert headers["authorization"].startswith("Bearer ")  # forward: true

        before = checks(proc)
        resp = await send(proc, "/dashboard", {"authorization": "Bearer " + other.sign(claims)})
        assert resp.status_code == 401
        assert resp.text == "Jwt verification fails"  # Envoy's own body, not gerrit-authz's JSON
        assert "application/json" not in resp.headers.get("content-type", "")
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        assert checks(proc) == before  # ext_authz was never asked

        # No token: jwt_authn lets it pass and gerrit-authz decides (Basic here).
        basic_seen = upstream(await send(proc, "/dashboard", as_user(gerrit.org.bob)))
        assert basic_seen["headers"]["x-gerrit-username"] == "bob"
    finally:
        await asyncio.to_thread(proc.stop)


async def test_authz_unreachable_is_envoys_503_without_body(gerrit: Any, echo: EchoUpstream, tmp_path: Path) -> None:
    async with running_server(authz_config(gerrit, tmp_path)) as app:
        proc = await start_envoy(bootstrap_for(app, echo), tmp_path / "envoy")
        try:
            carol = as_user(gerrit.org.carol)
            upstream(await send(proc, ARTIFACT, carol))
            await app.stop(grace=0.5)
            before = echo.requests
            resp = await send(proc, ARTIFACT, carol)
            assert resp.status_code == 503
            assert resp.content == b""  # status_on_error: no JSON, unlike gerrit-authz's own 503
            assert "retry-after" not in resp.headers and "x-authz-decision-id" not in resp.headers
            assert proc.stats("http.ingress.ext_authz.error")["http.ingress.ext_authz.error"] >= 1
            assert echo.requests == before  # failure_mode_allow: false
        finally:
            await asyncio.to_thread(proc.stop)


# Keep last: stops the session's Gerrit (and always restarts it).
TTL = 1.0
STALE_IF_ERROR = 5.0


async def explain_sources(app: AuthzServer, headers: dict[str, str]) -> list[str]:
    async with grpc.aio.insecure_channel(app.admin_address) as channel:
        resp = await admin_pb2_grpc.AdminStub(channel).Explain(
            admin_pb2.ExplainRequest(method="GET", path=ARTIFACT, host="svc.local", headers=headers), timeout=10
        )
    assert resp.allowed, resp
    return [t.source for t in resp.requirements]


async def test_gerrit_outage_stale_then_503(gerrit: Any, echo: EchoUpstream, tmp_path: Path) -> None:
    ttl = {k: f"{TTL}s" for k in ("account", "groups", "access", "capabilities", "change", "credentials", "negative")}
    config = authz_config(gerrit, tmp_path, cache={"ttl": ttl, "stale_if_error": f"{STALE_IF_ERROR}s"})
    carol = as_user(gerrit.org.carol)
    async with running_server(config) as app:
        proc = await start_envoy(bootstrap_for(app, echo), tmp_path / "envoy")
        try:
            # The answers are fetched between t_start and t_end; each expires TTL later and stays usable
            # STALE_IF_ERROR beyond that.
            t_start = time.monotonic()
            assert upstream(await send(proc, ARTIFACT, carol))["headers"]["x-gerrit-username"] == "carol"
            t_end = time.monotonic()
            await asyncio.to_thread(gerrit.server.stop)
            try:
                # Expired but inside stale_if_error: served from the stale cache, still allowed.
                await asyncio.sleep(max(0.0, t_end + TTL + 0.2 - time.monotonic()))
                assert time.monotonic() < t_start + TTL + STALE_IF_ERROR - 0.5, "Gerrit took too long to stop"
                seen = upstream(await send(proc, ARTIFACT, carol))
                assert seen["headers"]["x-gerrit-account-id"] == str(gerrit.org.carol.account_id)
                assert "stale_cache" in await explain_sources(app, carol)
                # Never cached: no usable answer, gerrit-authz's 503 (JSON and retry-after).
                body = our_deny(await send(proc, "/admin/users", as_user(gerrit.org.dave)), 503)
                assert body["error"] == "gerrit_unavailable"
                # Sent as error_response: Envoy counts it as an error (failure_mode_allow: false, so our 503 stands).
                assert proc.stats("http.ingress.ext_authz.error")["http.ingress.ext_authz.error"] == 1
                # Past the window: the cached answers are gone too.
                await asyncio.sleep(max(0.0, t_end + TTL + STALE_IF_ERROR + 0.3 - time.monotonic()))
                resp = await send(proc, ARTIFACT, carol)
                our_deny(resp, 503)
                assert resp.headers["retry-after"].isdigit()
            finally:
                await asyncio.to_thread(gerrit.server.start_again)
        finally:
            await asyncio.to_thread(proc.stop)
