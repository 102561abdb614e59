"""Gerrit's REST API over one pooled ``httpx.AsyncClient``: the raw (uncached) :class:`GerritFacts`.

Every request goes to ``{url}/a/...`` with HTTP basic auth and has Gerrit's ``)]}'`` XSSI prefix stripped. Its
*total* time (connect, headers and the whole body) is bounded by the smaller of ``gerrit.timeout`` and the
Check's remaining budget: httpx's own timeouts bound each read, so a Gerrit trickling its body one byte at a time
would otherwise hold a Check far past its deadline.

Answers are sorted into three kinds. An outage (unreachable, timed out, 5xx, 429) is a *transient*
:class:`Unavailable`, the only kind the cache may bridge with a stale answer. The service account being refused
(401/403) or a garbled 200 is a non-transient :class:`Unavailable`. Any other status is Gerrit's definite answer:
a negative fact ("no such account", "not allowed"), never an outage. Gerrit's text error bodies are kept as
``detail`` for the Explain trace.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import httpx

from ._accounts import AccountKey, carries
from ._deadline import Deadline
from ._facts import AccessResult, Account, ChangeInfo, Fact, Group, LabelVotes
from ._opstats import RotationStats
from ._secrets import Secret, StaticSecret
from ._trust import RotatingTransport, TrustFiles
from .errors import Unavailable

__all__ = ["GerritClient", "make_http_client"]

_XSSI = b")]}'"
_QUERY_LIMIT = "10"  # candidates per account query; Gerrit's email: operator also matches prefixes


@dataclass(frozen=True, slots=True)
class _Refused:
    """A definite non-200 answer from Gerrit (404, 400, 409, 422, the caller's credentials refused, ...)."""

    status: int
    detail: str

    def __str__(self) -> str:
        return f"Gerrit answered {self.status}" + (f": {self.detail}" if self.detail else "")


def make_http_client(
    *,
    max_connections: int = 100,
    verify: bool | TrustFiles = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The shared client. Cookies are refused: a session cookie set for one caller must never ride along.

    ``verify``: httpx's defaults (``True``/``False``), or :class:`TrustFiles`, whose context new connections are then
    made with, rebuilt when its files change. httpx reads proxies from the environment only with its own transport:
    behind such a proxy the files' context is used as read (at start, and on reload) rather than lose the proxy.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    context: bool | ssl.SSLContext = verify if isinstance(verify, bool) else verify.context
    if isinstance(verify, TrustFiles) and transport is None and not _environment_proxies():
        transport = RotatingTransport(verify, limits)
    return httpx.AsyncClient(
        limits=limits,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        verify=context,
        transport=transport,
        follow_redirects=False,
    )


def _environment_proxies() -> bool:
    """Whether ``HTTP(S)_PROXY``/``ALL_PROXY`` (any case) are set, as httpx's ``trust_env`` would use them."""
    return any(scheme != "no" for scheme in urllib.request.getproxies_environment())


def _account(data: dict[str, Any]) -> Account | None:
    if data.get("inactive"):
        return None  # a disabled account is nobody's identity
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
    """Uncached Gerrit lookups as the service account.

    ``password`` may be a :class:`Secret` that rotates: its current value is used for every request, and when
    Gerrit refuses the service account (401) it is re-read once and, if it changed, the request is retried once.
    """

    def __init__(
        self,
        url: str,
        username: str,
        password: str | Secret,
        http: httpx.AsyncClient,
        *,
        timeout: float,
        stats: RotationStats | None = None,
    ) -> None:
        self._base = url.rstrip("/") + "/a/"
        self._username = username
        self._secret: Secret = StaticSecret(password) if isinstance(password, str) else password
        self._auth_for = ("", httpx.BasicAuth(username, ""))
        self._http = http
        self._timeout = timeout
        self._stats = stats or RotationStats()

    def _service_auth(self) -> httpx.BasicAuth:
        password = self._secret.get()
        if self._auth_for[0] != password:
            self._auth_for = (password, httpx.BasicAuth(self._username, password))
        return self._auth_for[1]

    async def _get(
        self,
        path: str,
        deadline: Deadline,
        *,
        params: tuple[tuple[str, str], ...] = (),
        auth: httpx.BasicAuth | None = None,
    ) -> Any:
        """Gerrit's JSON answer, or :class:`_Refused` for a definite non-200 answer."""
        resp = await self._send(path, deadline, params, auth)
        if resp.status_code == 401 and auth is None and self._secret.refresh():
            # The password rotated under us (Gerrit first, the file a moment later): one retry, never a loop.
            self._stats.auth_retries += 1
            resp = await self._send(path, deadline, params, None)
        return self._answer(path, resp, service=auth is None)

    async def _send(
        self, path: str, deadline: Deadline, params: tuple[tuple[str, str], ...], auth: httpx.BasicAuth | None
    ) -> httpx.Response:
        timeout = deadline.bound(self._timeout)
        if timeout <= 0:
            raise Unavailable(
                "deadline_exceeded", "no time left in the Check's budget for a Gerrit request", transient=True
            )
        try:
            async with asyncio.timeout(timeout):
                return await self._http.get(
                    self._base + path, params=params or None, auth=auth or self._service_auth(), timeout=timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            raise Unavailable(
                "gerrit_timeout", f"Gerrit did not answer within {timeout:.3f}s", transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise Unavailable(
                "gerrit_unavailable", f"Gerrit unreachable: {type(exc).__name__}", transient=True
            ) from None

    def _answer(self, path: str, resp: httpx.Response, *, service: bool) -> Any:
        status = resp.status_code
        if status != 200:
            detail = resp.text.strip()[:300]
            if status >= 500 or status == 429:
                raise Unavailable("gerrit_error", f"Gerrit answered {status} for {path}", detail=detail, transient=True)
            if status in (401, 403) and service:
                raise Unavailable("gerrit_auth_failed", f"Gerrit refused the service account ({status})", detail=detail)
            return _Refused(status, detail)
        body = resp.content
        if body.startswith(_XSSI):
            body = body[len(_XSSI) :]
        try:
            return json.loads(body)
        except ValueError:
            raise Unavailable("gerrit_error", "Gerrit sent a body that is not JSON") from None

    @_shape_checked
    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        if key.field == "account_id":
            # account_key() admits digits only, so this path segment is a plain id.
            data = await self._get(f"accounts/{key.value}", deadline)
            candidates = [] if isinstance(data, _Refused) else [data]
        else:
            # A query by that one field (never the free-form resolver); the value holds no quote or backslash.
            query = f'{"email" if key.field == "email" else "username"}:"{key.value}"'
            data = await self._get("accounts/", deadline, params=(("q", query), ("o", "DETAILS"), ("n", _QUERY_LIMIT)))
            candidates = [] if isinstance(data, _Refused) else list(data)
        matches = [a for a in (_account(c) for c in candidates) if a is not None and carries(a, key)]
        if len(matches) != 1:
            why = "several accounts" if matches else "no active account"
            detail = str(data) if isinstance(data, _Refused) else f"{why} with {key.field} {key.value!r}"
            return Fact(None, detail=detail)
        return Fact(matches[0])

    @_shape_checked
    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        data = await self._get("accounts/self", deadline, auth=httpx.BasicAuth(username, password))
        account = None if isinstance(data, _Refused) else _account(data)
        if account is None:
            return Fact(None, detail="Gerrit refused the username/password")
        return Fact(account)

    @_shape_checked
    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        data = await self._get(f"accounts/{account_id}/groups", deadline)
        if isinstance(data, _Refused):
            return Fact((), detail=str(data))
        return Fact(tuple(Group(id=unquote(str(g.get("id", ""))), name=str(g.get("name", ""))) for g in data))

    @_shape_checked
    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        data = await self._get(
            f"projects/{quote(project, safe='')}/check.access",
            deadline,
            params=(("account", str(account_id)), ("ref", ref), ("perm", perm)),
        )
        if isinstance(data, _Refused):
            # 404: no such project (or hidden from the service account); 400/422: Gerrit refused the question.
            what = f"project {project!r} not found" if data.status == 404 else str(data)
            return Fact(AccessResult(False, what))
        # A denial is HTTP 200 with "status": 403 in the body.
        allowed = int(data.get("status", 0)) == 200
        return Fact(AccessResult(allowed, str(data.get("message", ""))))

    @_shape_checked
    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        data = await self._get(f"accounts/{account_id}/capabilities", deadline)
        if isinstance(data, _Refused):
            return Fact(frozenset(), detail=str(data))
        return Fact(frozenset(name for name, value in data.items() if value))

    @_shape_checked
    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        data = await self._get(
            f"changes/{quote(change_id, safe='~')}",
            deadline,
            params=(("o", "DETAILED_LABELS"), ("o", "SUBMITTABLE")),
        )
        if isinstance(data, _Refused):
            return Fact(None, detail=f"no change {change_id!r} visible to the service account ({data})")
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
