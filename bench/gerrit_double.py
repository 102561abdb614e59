"""An in-process Gerrit (and OIDC issuer) double for the benchmark: an ``httpx.MockTransport`` handler.

It answers the REST calls :mod:`authz_server._gerrit` makes, with Gerrit's ``)]}'`` prefix and JSON shapes,
plus the issuer's discovery document and JWKS (the JWT verifier shares the same httpx client). Nothing leaves
the process. ``delay`` (seconds) is awaited before every answer; every request is counted by a key that
identifies one distinct lookup (path + query, and the caller for ``accounts/self``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from typing import Any
from urllib.parse import unquote

import httpx

XSSI = b")]}'\n"
ISSUER = "http://127.0.0.1:9400"  # the example config's issuer; served by this double, never contacted
SERVICE_USER = "authz-bot"
SERVICE_PASSWORD = "bench-service-password"


def user_name(i: int) -> str:
    return "alice" if i == 0 else f"user{i:05d}"


def user_password(i: int) -> str:
    return f"http-password-{i:05d}"


def user_email(i: int) -> str:
    return f"{user_name(i)}@example.com"


def account_id(i: int) -> int:
    return 1_000_000 + i


def _account_json(i: int) -> dict[str, Any]:
    name = user_name(i)
    return {
        "_account_id": account_id(i),
        "name": name.capitalize() + " Example",
        "email": user_email(i),
        "username": name,
        "display_name": name.capitalize(),
        "avatars": [],
    }


def _index_of(query: str) -> int | None:
    """The user index for a username, an email or an account id; None for an unknown account."""
    if query.isdigit():
        n = int(query) - 1_000_000
        return n if 0 <= n < 1_000_000 else None
    name = query.split("@", 1)[0]
    if name == "alice":
        return 0
    if name.startswith("user") and name[4:].isdigit():
        return int(name[4:])
    return None


class GerritDouble:
    """Handler state: counts per distinct lookup, an optional delay, and the issuer's public JWK."""

    def __init__(self, *, delay: float = 0.0, jwk: dict[str, Any] | None = None) -> None:
        self.delay = delay
        self.jwk = jwk
        self.counts: Counter[str] = Counter()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def reset(self) -> None:
        self.counts.clear()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        raw = request.url.raw_path.decode()  # still percent-encoded: platform%2Fbuild is one segment
        path = raw.partition("?")[0]
        key = raw
        if path == "/a/accounts/self":
            key += " as " + _basic_user(request)
        self.counts[key] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._answer(request, path)

    # -- answers ---------------------------------------------------------------------------------------------

    def _answer(self, request: httpx.Request, path: str) -> httpx.Response:
        if path == "/.well-known/openid-configuration":
            return _json({"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"}, xssi=False)
        if path == "/jwks":
            return _json({"keys": [self.jwk] if self.jwk else []}, xssi=False)
        if not path.startswith("/a/"):
            return httpx.Response(404, text="Not found")
        if _basic_user(request) != SERVICE_USER and path != "/a/accounts/self":
            return httpx.Response(401, text="Unauthorized")
        parts = [unquote(p) for p in path[3:].split("/")]
        if parts[:2] == ["accounts", "self"]:
            user, password = _basic(request)
            i = _index_of(user)
            if i is None or password != user_password(i):
                return httpx.Response(401, text="Unauthorized")
            return _json(_account_json(i))
        if parts == ["accounts", ""]:
            # The strict lookup: q=email:"V" or q=username:"V" (gerrit-authz never uses the free-form resolver).
            field, _, quoted = request.url.params.get("q", "").partition(":")
            value = quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == '"' else ""
            i = _index_of(value) if field in ("email", "username") and not value.isdigit() else None
            return _json([] if i is None else [_account_json(i)])
        if parts[0] == "accounts" and len(parts) >= 2:
            i = _index_of(parts[1])
            if i is None:
                return httpx.Response(404, text=f"Account '{parts[1]}' not found")
            if len(parts) == 2:
                return _json(_account_json(i))
            if parts[2] == "groups":
                return _json(_groups(i))
            if parts[2] == "capabilities":
                return _json({"createProject": True, "viewAccess": i == 0} if i % 7 == 0 else {})
        if parts[0] == "projects" and len(parts) == 3 and parts[2] == "check.access":
            params = request.url.params
            project, ref, perm = parts[1], params.get("ref", ""), params.get("perm", "")
            account = params.get("account", "")
            allowed = perm == "read" or project.startswith("sandbox/")
            message = (
                f"user {account} has '{perm}' access to {project} {ref}"
                if allowed
                else f"user {account} lacks permission {perm} for {ref} in project {project}"
            )
            return _json({"status": 200 if allowed else 403, "message": message})
        if parts[0] == "changes" and len(parts) == 2:
            return _json(_change(parts[1]))
        return httpx.Response(404, text="Not found")


def _groups(i: int) -> list[dict[str, Any]]:
    names = ["Registered Users", "platform-devs", "build-cops", "release-managers", "Administrators"]
    return [
        {
            "id": f"{n:040x}",
            "name": names[n],
            "url": f"#/admin/groups/uuid-{n:040x}",
            "options": {},
            "description": f"{names[n]} group",
            "group_id": n + 1,
            "owner": "Administrators",
            "owner_id": f"{4:040x}",
            "created_on": "2024-01-01 00:00:00.000000000",
        }
        for n in range(len(names))
        if n < 3 or (i % (n + 2) == 0)
    ]


def _change(change_id: str) -> dict[str, Any]:
    number = int(change_id.rsplit("~", 1)[-1]) if change_id.rsplit("~", 1)[-1].isdigit() else 1
    vote = {"_account_id": 1_000_001, "value": 2}
    return {
        "id": f"platform%2Fbuild~main~I{number:040x}",
        "project": "platform/build",
        "branch": "main",
        "_number": number,
        "status": "MERGED",
        "submittable": False,
        "labels": {
            "Code-Review": {"all": [vote, {"_account_id": 1_000_002, "value": 0}], "values": {}},
            "Verified": {"all": [{"_account_id": 1_000_003, "value": 1}], "values": {}},
        },
    }


def _basic(request: httpx.Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return "", ""
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


def _basic_user(request: httpx.Request) -> str:
    return _basic(request)[0]


def _json(data: Any, *, xssi: bool = True) -> httpx.Response:
    body = json.dumps(data).encode()
    return httpx.Response(
        200, content=(XSSI + body) if xssi else body, headers={"content-type": "application/json; charset=UTF-8"}
    )
