"""Proves the Gerrit test harness: a real Gerrit, provisioned with the demo organisation, answers the
questions the authz service asks, when asked as the service account authz-bot (not as admin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _support.gerrit_provision import GerritFixture, User, parse_body

pytestmark = pytest.mark.gerrit


@pytest.fixture(scope="module")
def bot(gerrit: GerritFixture) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gerrit.server.url + "a/", auth=gerrit.org.bot.auth, timeout=30) as client:
        yield client


def get_json(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    resp = client.get(path, params=params)
    assert resp.status_code == 200, f"GET {path} -> {resp.status_code}: {resp.text}"
    return parse_body(resp.text)


def check_access(client: httpx.Client, project: str, user: User, perm: str, ref: str = "refs/heads/main") -> Any:
    params = {"account": user.email, "ref": ref, "perm": perm}
    return get_json(client, f"projects/{quote(project, safe='')}/check.access", params)


def test_account_lookup_by_email(gerrit: GerritFixture, bot: httpx.Client) -> None:
    alice = gerrit.org.alice
    info = get_json(bot, f"accounts/{alice.email}")
    assert info["_account_id"] == alice.account_id
    assert info["username"] == "alice"
    assert info["email"] == "alice@example.com"


def test_unknown_account_is_404(bot: httpx.Client) -> None:
    resp = bot.get("accounts/nobody@example.com")
    assert resp.status_code == 404
    assert "not found" in resp.text


def test_groups_of_alice(gerrit: GerritFixture, bot: httpx.Client) -> None:
    groups = get_json(bot, f"accounts/{gerrit.org.alice.account_id}/groups")
    by_name = {group["name"]: group["id"] for group in groups}
    assert by_name["release-managers"] == gerrit.org.release_managers
    assert "build-devs" not in by_name


def test_check_access_push_allowed_for_bob(gerrit: GerritFixture, bot: httpx.Client) -> None:
    result = check_access(bot, gerrit.org.build_project, gerrit.org.bob, "push")
    assert result["status"] == 200


def test_check_access_push_denied_for_carol(gerrit: GerritFixture, bot: httpx.Client) -> None:
    # A denial is still HTTP 200; the verdict is the body's "status".
    result = check_access(bot, gerrit.org.build_project, gerrit.org.carol, "push")
    assert result["status"] == 403
    assert "lacks permission push" in result["message"]


def test_secret_project_readable_by_bob_only(gerrit: GerritFixture, bot: httpx.Client) -> None:
    org = gerrit.org
    assert check_access(bot, org.secret_project, org.bob, "read")["status"] == 200
    denied = check_access(bot, org.secret_project, org.carol, "read")
    assert denied["status"] == 403
    assert "cannot see project" in denied["message"]
    # carol herself does not even see that the project exists
    carol_view = httpx.get(f"{org.url}a/projects/{quote(org.secret_project, safe='')}", auth=org.carol.auth)
    assert carol_view.status_code == 404


def test_capabilities_of_dave_and_carol(gerrit: GerritFixture, bot: httpx.Client) -> None:
    dave = get_json(bot, f"accounts/{gerrit.org.dave.account_id}/capabilities")
    assert dave.get("administrateServer") is True
    carol = get_json(bot, f"accounts/{gerrit.org.carol.account_id}/capabilities")
    assert "administrateServer" not in carol


def max_vote(change: dict[str, Any], label: str) -> int:
    return max((vote.get("value", 0) for vote in change["labels"][label].get("all", [])), default=0)


def test_change_a_is_merged_with_votes(gerrit: GerritFixture, bot: httpx.Client) -> None:
    change = get_json(bot, f"changes/{gerrit.org.change_merged.number}?o=DETAILED_LABELS&o=SUBMITTABLE")
    assert change["status"] == "MERGED"
    assert change["project"] == "platform/build"
    assert change["branch"] == "main"
    assert max_vote(change, "Code-Review") == 2
    assert max_vote(change, "Verified") == 1


def test_change_b_is_not_submittable(gerrit: GerritFixture, bot: httpx.Client) -> None:
    change = get_json(bot, f"changes/{gerrit.org.change_open.number}?o=DETAILED_LABELS&o=SUBMITTABLE")
    assert change["status"] == "NEW"
    assert change["submittable"] is False
    assert max_vote(change, "Code-Review") == 1


def test_change_c_is_submittable(gerrit: GerritFixture, bot: httpx.Client) -> None:
    change = get_json(bot, f"changes/{gerrit.org.change_submittable.number}?o=DETAILED_LABELS&o=SUBMITTABLE")
    assert change["status"] == "NEW"
    assert change["submittable"] is True
    assert max_vote(change, "Code-Review") == 2
    assert max_vote(change, "Verified") == 1


def test_secret_change_visible_to_bot_not_to_carol(gerrit: GerritFixture, bot: httpx.Client) -> None:
    org = gerrit.org
    assert get_json(bot, f"changes/{org.change_secret.number}")["project"] == org.secret_project
    carol_view = httpx.get(f"{org.url}a/changes/{org.change_secret.number}", auth=org.carol.auth)
    assert carol_view.status_code == 404


def test_http_password_of_bob(gerrit: GerritFixture) -> None:
    bob = gerrit.org.bob
    ok = httpx.get(f"{gerrit.server.url}a/accounts/self", auth=bob.auth)
    assert ok.status_code == 200
    assert parse_body(ok.text)["_account_id"] == bob.account_id
    wrong = httpx.get(f"{gerrit.server.url}a/accounts/self", auth=(bob.username, "not-the-password"))
    assert wrong.status_code == 401
