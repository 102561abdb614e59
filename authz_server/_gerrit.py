"""Gerrit's REST API over one pooled ``httpx.AsyncClient``: the raw (uncached) :class:`GerritFacts`.

Every request goes to ``{url}/a/...`` with HTTP basic auth, is bounded by the Check's remaining deadline, and has
Gerrit's ``)]}'`` XSSI prefix stripped. httpx failures become :class:`Unavailable`; Gerrit's text error bodies
are kept as ``detail`` for the Explain trace.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import httpx

from ._deadline import Deadline
from ._facts import AccessResult, Account, ChangeInfo, Fact, Group, LabelVotes
from .errors import Unavailable

__all__ = ["GerritClient", "make_http_client"]

_XSSI = b")]}'"
_NOT_FOUND = object()


def make_http_client(
    *, max_connections: int = 100, verify: bool = True, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The shared client. Cookies are refused: a session cookie set for one caller must never ride along."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        verify=verify,
        transport=transport,
        follow_redirects=False,
    )


def _account(data: dict[str, Any]) -> Account:
    return Account(
        id=int(data["_account_id"]),
        username=str(data.get("username", "")),
        email=str(data.get("email", "")),
        name=str(data.get("name", "")),
    )


def _labels(data: dict[str, Any]) -> dict[str, LabelVotes]:
    labels = {}
    for name, info in (data or {}).items():
        votes = [int(a.get("value", 0) or 0) for a in info.get("all", ()) if "value" in a]
        labels[name] = LabelVotes(
            max=max(votes, default=0), min=min(votes, default=0), blocking=bool(info.get("blocking", False))
        )
    return labels


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _shape_checked(method: _F) -> _F:
    """A well-formed JSON answer of an unexpected shape is Gerrit misbehaving: Unavailable, never a crash."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Unavailable("gerrit_error", f"unexpected answer from Gerrit ({type(exc).__name__})") from None

    return cast(_F, wrapper)


class GerritClient:
    """Uncached Gerrit lookups as the service account."""

    def __init__(self, url: str, username: str, password: str, http: httpx.AsyncClient, *, timeout: float) -> None:
        self._base = url.rstrip("/") + "/a/"
        self._auth = httpx.BasicAuth(username, password)
        self._http = http
        self._timeout = timeout

    async def _get(
        self,
        path: str,
        deadline: Deadline,
        *,
        params: dict[str, str] | None = None,
        auth: httpx.BasicAuth | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        timeout = deadline.bound(self._timeout)
        if timeout <= 0:
            raise Unavailable("deadline_exceeded", "no time left in the Check's budget for a Gerrit request")
        try:
            resp = await self._http.get(self._base + path, params=params, auth=auth or self._auth, timeout=timeout)
        except httpx.TimeoutException:
            raise Unavailable("gerrit_timeout", f"Gerrit did not answer within {timeout:.3f}s") from None
        except httpx.HTTPError as exc:
            raise Unavailable("gerrit_unavailable", f"Gerrit unreachable: {type(exc).__name__}") from None
        if resp.status_code == 404 and not_found_ok:
            return _NOT_FOUND
        if resp.status_code in (401, 403) and auth is not None:
            return _NOT_FOUND  # the caller's own credentials were refused
        if resp.status_code != 200:
            detail = resp.text.strip()[:300]
            if resp.status_code in (401, 403):
                raise Unavailable(
                    "gerrit_auth_failed",
                    f"Gerrit refused the service account ({resp.status_code})",
                    detail=detail,
                )
            raise Unavailable(
                "gerrit_error", f"Gerrit answered {resp.status_code} for {path.split('?')[0]}", detail=detail
            )
        body = resp.content
        if body.startswith(_XSSI):
            body = body[len(_XSSI) :]
        try:
            return json.loads(body)
        except ValueError:
            raise Unavailable("gerrit_error", "Gerrit sent a body that is not JSON") from None

    @_shape_checked
    async def account(self, query: str, deadline: Deadline) -> Fact[Account | None]:
        data = await self._get(f"accounts/{quote(query, safe='@')}", deadline, not_found_ok=True)
        if data is _NOT_FOUND:
            return Fact(None, detail=f"no Gerrit account {query!r}")
        return Fact(_account(data))

    @_shape_checked
    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        data = await self._get("accounts/self", deadline, auth=httpx.BasicAuth(username, password))
        if data is _NOT_FOUND:
            return Fact(None, detail="Gerrit refused the username/password")
        return Fact(_account(data))

    @_shape_checked
    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        data = await self._get(f"accounts/{account_id}/groups", deadline)
        return Fact(tuple(Group(id=unquote(str(g.get("id", ""))), name=str(g.get("name", ""))) for g in data))

    @_shape_checked
    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        data = await self._get(
            f"projects/{quote(project, safe='')}/check.access",
            deadline,
            params={"account": str(account_id), "ref": ref, "perm": perm},
            not_found_ok=True,
        )
        if data is _NOT_FOUND:
            return Fact(AccessResult(False, f"project {project!r} not found"))
        # A denial is HTTP 200 with "status": 403 in the body.
        allowed = int(data.get("status", 0)) == 200
        return Fact(AccessResult(allowed, str(data.get("message", ""))))

    @_shape_checked
    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        data = await self._get(f"accounts/{account_id}/capabilities", deadline)
        return Fact(frozenset(name for name, value in data.items() if value))

    @_shape_checked
    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        data = await self._get(
            f"changes/{quote(change_id, safe='~')}",
            deadline,
            params=[("o", "DETAILED_LABELS"), ("o", "SUBMITTABLE")],  # type: ignore[arg-type]
            not_found_ok=True,
        )
        if data is _NOT_FOUND:
            return Fact(None, detail=f"no change {change_id!r} visible to the service account")
        return Fact(
            ChangeInfo(
                number=int(data["_number"]),
                project=str(data.get("project", "")),
                branch=str(data.get("branch", "")),
                status=str(data.get("status", "")),
                labels=_labels(data.get("labels", {})),
                submittable=data.get("submittable"),
            )
        )
