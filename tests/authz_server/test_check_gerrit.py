"""Authorization/Check over real gRPC against a real Gerrit, through the contract's example policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from _support.authz import basic, check_request, check_stub, make_config, running_server
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit

ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
SECRET_ARTIFACT = "/artifacts/platform%2Fsecret/-/main/out/app.tar"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzServer]:
    secret = tmp_path_factory.mktemp("secret") / "gerrit-password"
    secret.write_text(gerrit.org.bot.http_password)
    config = make_config(gerrit.server.url, secret, identity=[{"gerrit_http_credentials": {}}])
    async with running_server(config) as app:
        yield app


async def check(app: AuthzServer, method: str, path: str, headers: dict[str, str] | None = None) -> CheckResponse:
    async with check_stub(app.address) as stub:
        return await stub.Check(check_request(method, path, headers), timeout=10)


def body(resp: CheckResponse) -> dict[str, Any]:
    return json.loads(resp.denied_response.body)  # type: ignore[no-any-return]


def upstream_headers(resp: CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def as_user(user: Any) -> dict[str, str]:
    return {"authorization": basic(user.username, user.http_password)}


async def test_health_rule_needs_no_credential(authz: AuthzServer) -> None:
    resp = await check(authz, "GET", "/healthz")
    assert resp.status.code == 0
    assert upstream_headers(resp)["x-authz-rule"] == "health"
    assert "x-gerrit-account-id" not in upstream_headers(resp)


async def test_read_artifacts_allowed_with_identity_headers(authz: AuthzServer, gerrit: Any) -> None:
    carol = gerrit.org.carol
    resp = await check(authz, "GET", ARTIFACT, {**as_user(carol), "x-gerrit-account-id": "1", "x-gerrit-role": "x"})
    assert resp.status.code == 0, resp.denied_response.body
    headers = upstream_headers(resp)
    assert headers["x-gerrit-account-id"] == str(carol.account_id)  # the spoofed "1" is overwritten
    assert headers["x-gerrit-username"] == "carol"
    assert headers["x-gerrit-email"] == carol.email
    assert headers["x-authz-rule"] == "read-artifacts"
    # x-authz-shadow: the fixed identity set is always covered, sent or not.
    assert list(resp.ok_response.headers_to_remove) == ["x-authz-shadow", "x-gerrit-role"]
    assert resp.dynamic_metadata["username"] == "carol"


async def test_read_denied_by_project_acl(authz: AuthzServer, gerrit: Any) -> None:
    resp = await check(authz, "GET", SECRET_ARTIFACT, as_user(gerrit.org.carol))
    assert resp.status.code == 7
    assert resp.denied_response.status.code == 403
    b = body(resp)
    assert b["error"] == "requirement_failed"
    assert b["rule"] == "read-artifacts"
    assert "platform/secret" in b["reason"] and "read" in b["reason"]
    assert (await check(authz, "GET", SECRET_ARTIFACT, as_user(gerrit.org.bob))).status.code == 0


async def test_upload_needs_push(authz: AuthzServer, gerrit: Any) -> None:
    assert (await check(authz, "PUT", ARTIFACT, as_user(gerrit.org.bob))).status.code == 0
    resp = await check(authz, "POST", ARTIFACT, as_user(gerrit.org.carol))
    assert resp.denied_response.status.code == 403
    assert body(resp)["rule"] == "upload-artifacts" and "push" in body(resp)["reason"]


async def test_admin_api_by_group_or_capability(authz: AuthzServer, gerrit: Any) -> None:
    assert (await check(authz, "GET", "/admin/users", as_user(gerrit.org.dave))).status.code == 0
    resp = await check(authz, "GET", "/admin/users", as_user(gerrit.org.carol))
    assert resp.denied_response.status.code == 403
    assert body(resp)["rule"] == "admin-api"


async def test_deploy_needs_release_manager_and_reviewed_merged_change(authz: AuthzServer, gerrit: Any) -> None:
    org = gerrit.org
    merged, open_change = org.change_merged.number, org.change_open.number
    assert (await check(authz, "POST", f"/deploy/{merged}", as_user(org.alice))).status.code == 0
    not_merged = await check(authz, "POST", f"/deploy/{open_change}", as_user(org.alice))
    assert not_merged.denied_response.status.code == 403
    assert "status is NEW" in body(not_merged)["reason"]
    not_manager = await check(authz, "POST", f"/deploy/{merged}", as_user(org.bob))
    assert not_manager.denied_response.status.code == 403
    assert "release-managers" in body(not_manager)["reason"]


async def test_anonymous_gets_401_with_challenge(authz: AuthzServer) -> None:
    resp = await check(authz, "GET", "/dashboard")
    assert resp.status.code == 16
    assert resp.denied_response.status.code == 401
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    # gerrit_http_credentials is the one configured kind: Basic is what the caller is asked for.
    assert headers["www-authenticate"] == 'Basic realm="gerrit-authz"'
    assert headers["content-type"] == "application/json"


async def test_wrong_password_is_401_with_the_basic_challenge(authz: AuthzServer, gerrit: Any) -> None:
    resp = await check(authz, "GET", "/dashboard", {"authorization": basic("bob", "not-his-password")})
    assert resp.denied_response.status.code == 401
    assert json.loads(resp.denied_response.body)["error"] == "invalid_credentials"
    challenges = [h.header.value for h in resp.denied_response.headers if h.header.key == "www-authenticate"]
    assert challenges == ['Basic realm="gerrit-authz"']  # error="invalid_token" is Bearer's (RFC 6750), not Basic's
    assert "not-his-password" not in resp.SerializeToString().decode("latin-1")


async def test_dot_segments_are_400(authz: AuthzServer, gerrit: Any) -> None:
    resp = await check(authz, "GET", "/artifacts/platform%2Fbuild/-/main/%2e%2e/x", as_user(gerrit.org.bob))
    assert resp.status.code == 3
    assert resp.denied_response.status.code == 400
