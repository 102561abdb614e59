"""Creates the demo organisation that the integration tests run against, through Gerrit's REST API only.

`provision(url, admin_auth)` may be called again on the same site: every step first looks for what it
would create (HTTP 409 or a query by topic) and reuses it.

What it sets up (see DemoOrg for the values tests get back):
  authz-bot        service account in group `authz-service` with the global capabilities
                   viewAccess       check.access (else HTTP 403 "view access not permitted")
                   viewAllAccounts  other accounts when accounts.visibility is not ALL (else 404 / 422)
                   administrateServer  another account's capabilities (else 403 "administrate server not
                                    permitted"); it also shows the bot every project (check.access on
                                    hidden ones) and the groups of others (else filtered to visible groups)
                   administrateServer implies the other two; they are granted as well so that the bot
                   keeps them if an operator drops it. It does NOT grant Read on refs: the bot reads
                   platform/secret changes because authz-service is in that project's read rules.
  alice            member of `release-managers`
  bob              member of `build-devs`: may push to platform/build refs/heads/*, may read platform/secret
  carol            no special rights; cannot see platform/secret at all
  dave             member of `Administrators`
  platform/build   branch main; read for everybody (inherited), push on refs/heads/* for build-devs only
  platform/secret  branch main; read only for build-devs and authz-service (exclusive on refs/*,
                   refs/heads/* and refs/meta/version, which All-Projects opens to Anonymous Users)
  Verified         label -1..+1 on All-Projects, required by a submit requirement, votable by Administrators
  changes          on platform/build main: A merged (CR+2, V+1), B open (CR+1), C open and submittable
                   (CR+2, V+1); on platform/secret main: D open, owned by bob
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .gerrit import GerritServer

XSSI_PREFIX = ")]}'"
BUILD_PROJECT = "platform/build"
SECRET_PROJECT = "platform/secret"
BRANCH = "main"
BOT_CAPABILITIES = ("viewAccess", "viewAllAccounts", "administrateServer")


@dataclass(frozen=True)
class User:
    username: str
    account_id: int
    email: str | None
    http_password: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.http_password)


@dataclass(frozen=True)
class Change:
    number: int
    project: str
    branch: str
    change_id: str  # the Change-Id, "I..."
    subject: str

    @property
    def triplet(self) -> str:
        return f"{quote(self.project, safe='')}~{self.branch}~{self.change_id}"


@dataclass(frozen=True)
class DemoOrg:
    url: str
    admin: User
    bot: User
    alice: User
    bob: User
    carol: User
    dave: User
    release_managers: str  # group UUIDs
    build_devs: str
    authz_service: str
    administrators: str
    build_project: str  # "platform/build"
    secret_project: str  # "platform/secret"
    branch: str  # "main"
    change_merged: Change  # A: MERGED, Code-Review+2, Verified+1
    change_open: Change  # B: NEW, Code-Review+1 only (not submittable)
    change_submittable: Change  # C: NEW, Code-Review+2, Verified+1, submittable
    change_secret: Change  # D: NEW in platform/secret, owned by bob
    bot_capabilities: tuple[str, ...]


@dataclass(frozen=True)
class GerritFixture:
    """What the session fixture `gerrit` yields: the running server and the provisioned organisation."""

    server: GerritServer
    org: DemoOrg


class GerritRestError(RuntimeError):
    pass


def parse_body(text: str) -> Any:
    """Gerrit JSON with the XSSI guard `)]}'` stripped; None for an empty body."""
    if text.startswith(XSSI_PREFIX):
        text = text[len(XSSI_PREFIX) :]
    text = text.strip()
    return json.loads(text) if text else None


class Rest:
    """Minimal authenticated Gerrit REST client (paths are relative to /a/)."""

    def __init__(self, url: str, auth: tuple[str, str]) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/") + "/a/", auth=auth, timeout=60.0)

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: Any = None, accept: tuple[int, ...] = ()) -> tuple[int, Any]:
        resp = self._client.request(method, path, json=body)
        if resp.status_code >= 400 and resp.status_code not in accept:
            raise GerritRestError(f"{method} {path} -> {resp.status_code}: {resp.text.strip()[:500]}")
        return resp.status_code, parse_body(resp.text) if resp.status_code < 400 else resp.text

    def get(self, path: str) -> Any:
        return self.call("GET", path)[1]

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body)[1]

    def put(self, path: str, body: Any = None) -> Any:
        return self.call("PUT", path, body)[1]


def _q(name: str) -> str:
    return quote(name, safe="")


def _ensure_user(rest: Rest, username: str, email: str | None, password: str) -> User:
    body: dict[str, Any] = {"name": username.replace("-", " ").title(), "http_password": password}
    if email:
        body["email"] = email
    status, info = rest.call("PUT", f"accounts/{_q(username)}", body, accept=(409,))
    if status == 409:  # exists: make sure the password is the one we hand out
        info = rest.get(f"accounts/{_q(username)}")
        rest.put(f"accounts/{info['_account_id']}/password.http", {"http_password": password})
    return User(username, int(info["_account_id"]), email, password)


def _ensure_group(rest: Rest, name: str, members: list[str]) -> str:
    status, info = rest.call("PUT", f"groups/{_q(name)}", {"members": members}, accept=(409,))
    if status == 409:
        info = rest.get(f"groups/{_q(name)}")
        if members:
            rest.post(f"groups/{info['id']}/members.add", {"members": members})
    return str(info["id"])


def _ensure_project(rest: Rest, name: str) -> None:
    body = {"branches": [BRANCH], "create_empty_commit": True, "parent": "All-Projects"}
    rest.call("PUT", f"projects/{_q(name)}", body, accept=(409,))


def _rule(*groups: str, **extra: Any) -> dict[str, Any]:
    return {group: {"action": "ALLOW", **extra} for group in groups}


def _grant(rest: Rest, project: str, sections: dict[str, dict[str, Any]]) -> None:
    """Adds permissions: {ref_pattern: {permission: {"rules": ..., optional "exclusive"/"label"}}}."""
    add = {ref: {"permissions": perms} for ref, perms in sections.items()}
    rest.post(f"projects/{_q(project)}/access", {"add": add})


def _ensure_verified_label(rest: Rest, administrators: str) -> None:
    label = {"values": {"-1": "Fails", " 0": "No score", "+1": "Verified"}, "function": "NoBlock"}
    rest.call("PUT", "projects/All-Projects/labels/Verified", label)  # 201 created or 200 updated
    requirement = {
        "name": "Verified",
        "description": "A CI system must verify the change",
        "submittability_expression": "label:Verified=MAX AND -label:Verified=MIN",
        "allow_override_in_child_projects": False,
    }
    rest.call("PUT", "projects/All-Projects/submit_requirements/Verified", requirement)
    vote = {"label": "Verified", "rules": _rule(administrators, min=-1, max=1)}
    _grant(rest, "All-Projects", {"refs/heads/*": {"label-Verified": vote}})


def _ensure_change(
    rest: Rest, project: str, topic: str, subject: str, labels: dict[str, int], submit: bool = False
) -> Change:
    """One empty-commit change per topic, voted (and submitted) as asked; reused when it exists."""
    found = rest.get(f"changes/?q={_q(f'topic:{topic} project:{project}')}")
    info = found[0] if found else None
    if info is None:
        body = {"project": project, "branch": BRANCH, "subject": subject, "topic": topic}
        info = rest.post("changes/", body)
    number = int(info["_number"])
    if info["status"] == "NEW":
        if labels:
            rest.post(f"changes/{number}/revisions/current/review", {"labels": labels})
        if submit:
            rest.post(f"changes/{number}/submit")
    return Change(number, project, info["branch"], info["change_id"], info["subject"])


def provision(url: str, admin_auth: tuple[str, str]) -> DemoOrg:
    """Creates (or finds) the demo organisation on the Gerrit at `url` and describes it."""
    admin_rest = Rest(url, admin_auth)
    try:
        return _provision(url, admin_rest, admin_auth)
    finally:
        admin_rest.close()


def _provision(url: str, rest: Rest, admin_auth: tuple[str, str]) -> DemoOrg:
    me = rest.get("accounts/self")
    admin = User(admin_auth[0], int(me["_account_id"]), me.get("email"), admin_auth[1])
    bot = _ensure_user(rest, "authz-bot", None, "authz-bot-http-pw")
    users = {
        name: _ensure_user(rest, name, f"{name}@example.com", f"{name}-http-pw")
        for name in ("alice", "bob", "carol", "dave")
    }

    release_managers = _ensure_group(rest, "release-managers", ["alice"])
    build_devs = _ensure_group(rest, "build-devs", ["bob"])
    authz_service = _ensure_group(rest, "authz-service", ["authz-bot"])
    administrators = _ensure_group(rest, "Administrators", ["dave"])

    capabilities = {cap: {"rules": _rule(authz_service)} for cap in BOT_CAPABILITIES}
    _grant(rest, "All-Projects", {"GLOBAL_CAPABILITIES": capabilities})
    _ensure_verified_label(rest, administrators)

    _ensure_project(rest, BUILD_PROJECT)
    _grant(rest, BUILD_PROJECT, {"refs/heads/*": {"push": {"rules": _rule(build_devs)}}})

    _ensure_project(rest, SECRET_PROJECT)
    secret_read = {"read": {"exclusive": True, "rules": _rule(build_devs, authz_service)}}
    _grant(rest, SECRET_PROJECT, {ref: secret_read for ref in ("refs/*", "refs/heads/*", "refs/meta/version")})

    full = {"Code-Review": 2, "Verified": 1}
    change_a = _ensure_change(rest, BUILD_PROJECT, "demo-a", "Demo change A (merged)", full, submit=True)
    change_b = _ensure_change(rest, BUILD_PROJECT, "demo-b", "Demo change B (CR+1)", {"Code-Review": 1})
    change_c = _ensure_change(rest, BUILD_PROJECT, "demo-c", "Demo change C (submittable)", full)
    bob_rest = Rest(url, users["bob"].auth)  # only build-devs can see platform/secret, so bob creates it
    try:
        change_d = _ensure_change(bob_rest, SECRET_PROJECT, "demo-d", "Demo change D (secret)", {})
    finally:
        bob_rest.close()

    return DemoOrg(
        url=url,
        admin=admin,
        bot=bot,
        alice=users["alice"],
        bob=users["bob"],
        carol=users["carol"],
        dave=users["dave"],
        release_managers=release_managers,
        build_devs=build_devs,
        authz_service=authz_service,
        administrators=administrators,
        build_project=BUILD_PROJECT,
        secret_project=SECRET_PROJECT,
        branch=BRANCH,
        change_merged=change_a,
        change_open=change_b,
        change_submittable=change_c,
        change_secret=change_d,
        bot_capabilities=BOT_CAPABILITIES,
    )


def ensure_service_user(url: str, admin_auth: tuple[str, str], username: str) -> int:
    """A Gerrit service user without email or password (it calls with a client certificate); its account id."""
    rest = Rest(url, admin_auth)
    try:
        rest.call("PUT", f"accounts/{_q(username)}", {"name": username}, accept=(409,))
        info = rest.get(f"accounts/{_q(username)}")
    finally:
        rest.close()
    if info.get("username") != username:
        raise GerritRestError(f"account {username!r} has username {info.get('username')!r}")
    return int(info["_account_id"])
