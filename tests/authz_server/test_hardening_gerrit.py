"""The hardening of issue 7 against the real Gerrit: what a wrong allow would need, Gerrit's own semantics refuse.

- A token's claim never borrows another account: `self`, `me`, ids, usernames, `Name <email>` never resolve.
- A group *named* like another group's UUID does not satisfy `group: <UUID>`.
- A parent project's access change followed by `Invalidate(project=parent)` is seen on its child at once.
- A grant revoked by Gerrit answering 4xx (an account deleted: 422) is a deny, never the stale allow.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from _support.authz import basic, check_request, check_stub, make_config, running_server
from _support.gerrit_provision import Rest
from _support.oidc import JwksServer, SigningKey, make_claims
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit

AUDIENCE = "gerrit-authz-demo"
KEY = SigningKey.rsa(kid="hardening-1")
PARENT = "hardening/parent"
CHILD = "hardening/parent/child"


@pytest.fixture(scope="module")
def issuer() -> Iterator[JwksServer]:
    server = JwksServer().start()
    server.set_keys(KEY)
    yield server
    server.close()


def rules(admin_group: str) -> list[dict[str, Any]]:
    return [
        {"name": "admins-by-uuid", "match": {"path_prefix": "/admin/"}, "require": {"group": admin_group}},
        {
            "name": "read",
            "match": {"path": "/src/{project}/-/{branch}"},
            "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
        },
        {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
    ]


def bearer(issuer: JwksServer, claim: str, value: Any) -> dict[str, str]:
    extra: dict[str, Any] = {"email": None, claim: value}
    claims = make_claims(issuer.issuer, AUDIENCE, now=time.time(), **extra)
    return {"authorization": "Bearer " + KEY.sign(claims)}


def headers_of(resp: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def by_field(gerrit: Any, issuer: JwksServer, password_file: Path) -> AsyncIterator[dict[str, AuthzServer]]:
    """One server per account_field, each mapping the token's `who` claim strictly by that field."""
    async with AsyncExitStack() as stack:
        servers: dict[str, AuthzServer] = {}
        for field in ("email", "username", "account_id"):
            jwt = {"issuer": issuer.issuer, "audiences": [AUDIENCE], "account_claim": "who", "account_field": field}
            config = make_config(
                gerrit.server.url, password_file, identity=[{"jwt": jwt}], rules=rules(gerrit.org.administrators)
            )
            servers[field] = await stack.enter_async_context(running_server(config))
        yield servers


async def mapped_account(server: AuthzServer, headers: dict[str, str]) -> str | None:
    async with check_stub(server.address) as stub:
        resp = await stub.Check(check_request("GET", "/dashboard", headers), timeout=10)
    assert resp.status.code == 0, resp.denied_response.body  # authenticated either way
    return headers_of(resp).get("x-gerrit-account-id")


def borrowed_forms(gerrit: Any) -> list[Any]:
    carol, bot = gerrit.org.carol, gerrit.org.bot
    return [
        "self",
        "me",
        "SELF",
        str(carol.account_id),
        "carol",
        bot.username,
        f"Carol <{carol.email}>",
        f"Carol ({carol.account_id})",
        f"({carol.account_id})",
        ".",
        "..",
        f" {carol.email}",
        f"{carol.email}\n",
        f"{carol.email}/..",
        "carol@example",  # a prefix: Gerrit's email: operator matches it
        "arol@example.com",
        "CAROL",
        f"{carol.account_id}abc",
        "",
        17,
        [carol.email],
    ]


async def test_no_claim_value_borrows_another_account(
    by_field: dict[str, AuthzServer], gerrit: Any, issuer: JwksServer
) -> None:
    for form in borrowed_forms(gerrit):
        for field, server in by_field.items():
            own = (("username", "carol"), ("username", gerrit.org.bot.username))
            if (field, form) in (*own, ("account_id", str(gerrit.org.carol.account_id))):
                continue  # the forms that really are that account's value for that field
            got = await mapped_account(server, bearer(issuer, "who", form))
            assert got is None, f"{field}: {form!r} mapped to account {got}"


async def test_each_field_maps_exactly_its_own_value(
    by_field: dict[str, AuthzServer], gerrit: Any, issuer: JwksServer
) -> None:
    carol = gerrit.org.carol
    for field, value in (("email", carol.email), ("username", "carol"), ("account_id", str(carol.account_id))):
        assert await mapped_account(by_field[field], bearer(issuer, "who", value)) == str(carol.account_id)
    # Email addresses compare without regard to case, as Gerrit's own lookups do.
    assert await mapped_account(by_field["email"], bearer(issuer, "who", carol.email.upper())) == str(carol.account_id)


async def test_unverified_email_is_refused(by_field: dict[str, AuthzServer], gerrit: Any, issuer: JwksServer) -> None:
    claims = make_claims(
        issuer.issuer, AUDIENCE, now=time.time(), email=None, who=gerrit.org.carol.email, email_verified=False
    )
    async with check_stub(by_field["email"].address) as stub:
        resp = await stub.Check(
            check_request("GET", "/dashboard", {"authorization": "Bearer " + KEY.sign(claims)}), timeout=10
        )
    assert resp.denied_response.status.code == 401
    assert "not verified" in json.loads(resp.denied_response.body)["reason"]


async def test_a_group_named_like_a_uuid_is_not_that_group(
    by_field: dict[str, AuthzServer], gerrit: Any, issuer: JwksServer, rest: Rest
) -> None:
    admins = gerrit.org.administrators
    # Any user allowed to create groups can do this: a group of their own, renamed to the Administrators' UUID.
    twin = rest.put(f"groups/uuid-twin-{uuid.uuid4().hex[:8]}", {"members": ["carol"]})
    assert rest.put(f"groups/{twin['id']}/name", {"name": admins}) == admins
    assert rest.get(f"groups/{twin['id']}")["name"] == admins and twin["id"] != admins

    async with check_stub(by_field["username"].address) as stub:
        carol = await stub.Check(check_request("GET", "/admin/x", bearer(issuer, "who", "carol")), timeout=10)
        dave = await stub.Check(check_request("GET", "/admin/x", bearer(issuer, "who", "dave")), timeout=10)
    assert carol.denied_response.status.code == 403
    assert dave.status.code == 0, dave.denied_response.body  # a real member of Administrators


async def test_parent_access_change_reaches_the_child_on_invalidate(
    gerrit: Any, password_file: Path, rest: Rest
) -> None:
    for name, parent in ((PARENT, "All-Projects"), (CHILD, PARENT)):
        body = {"branches": ["main"], "create_empty_commit": True, "parent": parent}
        rest.call("PUT", f"projects/{name.replace('/', '%2F')}", body, accept=(409,))
    long = {"account": "10m", "groups": "10m", "access": "10m", "change": "10m", "negative": "10m"}
    identity = [{"gerrit_http_credentials": {}}]
    config = make_config(gerrit.server.url, password_file, identity=identity, cache={"ttl": long}, rules=rules("x"))
    bob = {"authorization": basic(*gerrit.org.bob.auth)}
    path = f"/src/{CHILD.replace('/', '%2F')}/-/main"
    async with running_server(config) as app, check_stub(app.address) as stub:
        assert (await stub.Check(check_request("GET", path, bob), timeout=10)).status.code == 0
        # Gerrit changes under the cached allow: the parent blocks reads on refs/heads/* for everybody.
        block = {"read": {"rules": {"global:Anonymous-Users": {"action": "BLOCK"}}}}
        rest.post(f"projects/{PARENT.replace('/', '%2F')}/access", {"add": {"refs/heads/*": {"permissions": block}}})
        try:
            assert (await stub.Check(check_request("GET", path, bob), timeout=10)).status.code == 0  # still cached
            async with grpc.aio.insecure_channel(app.admin_address) as channel:
                removed = await admin_pb2_grpc.AdminStub(channel).Invalidate(
                    admin_pb2.InvalidateRequest(project=PARENT), timeout=10
                )
            assert removed.removed >= 1
            denied = await stub.Check(check_request("GET", path, bob), timeout=10)
            assert denied.denied_response.status.code == 403, "the child still served the parent's old answer"
        finally:
            rest.post(f"projects/{PARENT.replace('/', '%2F')}/access", {"remove": {"refs/heads/*": {}}})


async def test_a_deleted_account_is_denied_not_served_the_stale_allow(
    gerrit: Any, issuer: JwksServer, password_file: Path, rest: Rest
) -> None:
    name = f"leaver-{uuid.uuid4().hex[:8]}"
    email = f"{name}@example.com"
    rest.put(f"accounts/{name}", {"name": name, "email": email, "http_password": "leaver-pw"})
    identity = [{"jwt": {"issuer": issuer.issuer, "audiences": [AUDIENCE]}}]
    ttl = {"account": "10m", "access": "1s", "negative": "1s"}
    config = make_config(
        gerrit.server.url,
        password_file,
        identity=identity,
        cache={"ttl": ttl, "stale_if_error": "10m"},
        rules=rules("x"),
    )
    token = bearer(issuer, "email", email)
    path = "/src/platform%2Fbuild/-/main"
    async with running_server(config) as app, check_stub(app.address) as stub:
        assert (await stub.Check(check_request("GET", path, token), timeout=10)).status.code == 0
        # The account deletes itself: Gerrit now answers check.access for its id with 422 "not found".
        leaver = Rest(gerrit.server.url, (name, "leaver-pw"))
        try:
            assert leaver.call("DELETE", "accounts/self")[0] == 204
        finally:
            leaver.close()
        await asyncio.sleep(1.2)  # the cached allow expires (its mapping stays cached: ttl.account 10m)
        resp = await stub.Check(check_request("GET", path, token), timeout=10)
    assert resp.denied_response.status.code == 403, resp.denied_response.body
    assert json.loads(resp.denied_response.body)["error"] == "requirement_failed"
