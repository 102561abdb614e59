"""The service account's rights, measured on the real Gerrit (README "The Gerrit service account" table).

Three fresh accounts ask Gerrit the calls gerrit-authz makes: one with no capability, one with View Access only,
one with Administrate Server only. None is in a group with Read on ``platform/secret``. What each is answered is
what the README, docs/reference.md, examples/ and deploy/ tell operators to grant. scripts/test.sh runs this
file on Gerrit 3.10 and on the newest release (3.13) where Java 21+ is installed: the `change:` row differs
between them (Administrate Server sees every change on 3.13, not on 3.10).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _support.gerrit_provision import GerritFixture, Rest, parse_body

pytestmark = pytest.mark.gerrit

ACCOUNTS = {"rights-none": None, "rights-view": "viewAccess", "rights-admin": "administrateServer"}


@pytest.fixture(scope="module")
def as_account(gerrit: GerritFixture, rest: Rest) -> Iterator[dict[str, httpx.Client]]:
    clients = {}
    for name, capability in ACCOUNTS.items():
        status, info = rest.call("PUT", f"accounts/{name}", {"name": name, "http_password": f"{name}-pw"}, (409,))
        if status == 409:
            info = rest.get(f"accounts/{name}")
            rest.put(f"accounts/{info['_account_id']}/password.http", {"http_password": f"{name}-pw"})
        if capability is not None:
            group = f"{name}-group"
            rest.call("PUT", f"groups/{group}", {"members": [name]}, (409,))
            uuid = rest.get(f"groups/{group}")["id"]
            grant = {"GLOBAL_CAPABILITIES": {"permissions": {capability: {"rules": {uuid: {"action": "ALLOW"}}}}}}
            rest.post("projects/All-Projects/access", {"add": grant})
        clients[name] = httpx.Client(base_url=gerrit.server.url.rstrip("/") + "/a/", auth=(name, f"{name}-pw"))
    yield clients
    for client in clients.values():
        client.close()


def ask(client: httpx.Client, path: str) -> tuple[int, Any]:
    resp = client.get(path, timeout=30)
    return resp.status_code, parse_body(resp.text) if resp.status_code == 200 else resp.text.strip()


def test_check_access_needs_view_access_and_a_visible_project(
    as_account: dict[str, httpx.Client], gerrit: GerritFixture
) -> None:
    org = gerrit.org
    build = f"projects/platform%2Fbuild/check.access?account={org.bob.account_id}&ref=refs/heads/main&perm=push"
    assert ask(as_account["rights-none"], build)[0] == 403  # "view access not permitted"
    status, body = ask(as_account["rights-view"], build)
    assert status == 200 and body["status"] == 200
    status, body = ask(as_account["rights-admin"], build)  # Administrate Server implies View Access
    assert status == 200 and body["status"] == 200
    # A project the service account cannot see: View Access is not enough, Administrate Server shows it.
    secret = f"projects/platform%2Fsecret/check.access?account={org.bob.account_id}&ref=refs/heads/main&perm=read"
    assert ask(as_account["rights-view"], secret)[0] == 404
    status, body = ask(as_account["rights-admin"], secret)
    assert status == 200 and body["status"] == 200


def test_groups_of_another_account_are_silently_filtered_without_administrate_server(
    as_account: dict[str, httpx.Client], gerrit: GerritFixture
) -> None:
    alice = gerrit.org.alice.account_id
    for name in ("rights-none", "rights-view"):
        status, groups = ask(as_account[name], f"accounts/{alice}/groups")
        assert status == 200  # no error: the list is just shorter
        assert "release-managers" not in {g["name"] for g in groups}, name
    status, groups = ask(as_account["rights-admin"], f"accounts/{alice}/groups")
    assert status == 200 and "release-managers" in {g["name"] for g in groups}


def test_capabilities_of_another_account_need_administrate_server(
    as_account: dict[str, httpx.Client], gerrit: GerritFixture
) -> None:
    dave = gerrit.org.dave.account_id
    assert ask(as_account["rights-none"], f"accounts/{dave}/capabilities")[0] == 403
    assert ask(as_account["rights-view"], f"accounts/{dave}/capabilities")[0] == 403
    status, caps = ask(as_account["rights-admin"], f"accounts/{dave}/capabilities")
    assert status == 200 and caps.get("administrateServer") is True


def test_a_change_needs_read_on_its_branch_or_on_newer_gerrit_administrate_server(
    as_account: dict[str, httpx.Client], gerrit: GerritFixture
) -> None:
    org = gerrit.org
    query = "?o=DETAILED_LABELS&o=SUBMITTABLE"
    # platform/build is readable by every registered user: any account sees its changes.
    for client in as_account.values():
        assert ask(client, f"changes/{org.change_merged.number}{query}")[0] == 200
    # platform/secret is not: without Read there the change is a 404 ...
    for name in ("rights-none", "rights-view"):
        assert ask(as_account[name], f"changes/{org.change_secret.number}{query}")[0] == 404, name
    # ... and Administrate Server shows it only on newer Gerrit (3.10: 404; 3.13: 200, measured).
    version = tuple(int(part) for part in gerrit.server.version.split(".")[:2])
    expected = 200 if version >= (3, 12) else 404
    assert ask(as_account["rights-admin"], f"changes/{org.change_secret.number}{query}")[0] == expected
