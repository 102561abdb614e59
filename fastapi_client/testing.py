"""A scriptable stand-in for gerrit-authz, so an app's tests need neither the service nor Gerrit.

:class:`FakeAuthorizer` is a real ``grpc.aio`` server implementing ``envoy.service.auth.v3.Authorization/Check``
on ``127.0.0.1`` and a free port: the middleware under test runs unchanged (same channel, same CheckRequest, same
timeout handling), only the answers are scripted. Every CheckRequest it receives is recorded.

Async tests (pytest-asyncio, anyio)::

    from fastapi_client import AuthzMiddleware
    from fastapi_client.testing import FakeAuthorizer

    async def test_me() -> None:
        async with FakeAuthorizer() as fake:
            app = create_app()
            app.add_middleware(AuthzMiddleware, target=fake.target)
            fake.allow(account_id=1000001, username="bob", email="bob@example.com", rule="read-artifacts")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                assert (await client.get("/me")).json()["username"] == "bob"
            fake.deny(403, {"error": "requirement_failed", "reason": "no read on platform/secret"})
            ...
            assert fake.requests[-1].attributes.request.http.path == "/me"

Synchronous tests (Starlette's ``TestClient``) use ``with FakeAuthorizer() as fake:``; the server then runs on
its own event loop in a background thread.

Scripting (the latest call wins, for all following Checks):

* ``allow(identity | account_id=..., username=..., email=..., rule=..., headers=..., response_headers=...)``:
  allowed like gerrit-authz allows: identity headers set, client-sent ``x-gerrit-*``/``x-authz-*`` removed.
* ``deny(status=403, body=None, headers=None)``: a denial with gerrit-authz's JSON body shape by default
  (401 also gets ``www-authenticate``, 503 ``retry-after``).
* ``respond(fn)``: ``fn(CheckRequest)`` returns a ``CheckResponse`` (or an awaitable of one); see
  :func:`allow_response` and :func:`deny_response` to build them.
* ``fail(code)``: the RPC itself fails (e.g. ``UNAVAILABLE``), as when the service is broken.
* ``delay``: seconds to wait before answering, to exercise the middleware's timeout.

Until scripted, every Check is denied (403): a test that forgot to script cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc.status_pb2 import Status as RpcStatus

from authz_server.checkrequest import is_identity_header
from authz_server.errors import STATUS, AuthzError

from ._identity import AuthzIdentity

__all__ = ["FakeAuthorizer", "Handler", "allow_response", "deny_response"]

#: What ``respond()`` accepts.
Handler = Callable[[CheckRequest], "CheckResponse | Awaitable[CheckResponse]"]

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = HeaderValueOption.HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
# gerrit-authz's own status table, read backwards: HTTP status -> gRPC code and error family.
_DENIALS = {s.http: (s.grpc, family) for family, s in STATUS.items() if family not in ("ok", AuthzError.family)}


def _options(headers: Mapping[str, str]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_OVERWRITE) for k, v in headers.items()]


def allow_response(
    request: CheckRequest | None = None,
    identity: AuthzIdentity | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    response_headers: Mapping[str, str] | None = None,
) -> CheckResponse:
    """An OK CheckResponse shaped like gerrit-authz's: identity headers, and removal of spoofed ones."""
    identity = identity or AuthzIdentity.anonymous(rule="fake")
    set_headers = {"x-authz-rule": identity.rule, "x-authz-decision-id": identity.decision_id or uuid.uuid4().hex}
    if identity.account_id is not None:
        set_headers["x-gerrit-account-id"] = str(identity.account_id)
    if identity.username:
        set_headers["x-gerrit-username"] = identity.username
    if identity.email:
        set_headers["x-gerrit-email"] = identity.email
    set_headers.update(headers or {})
    sent = request.attributes.request.http.headers if request is not None else {}
    remove = [h for h in sent if is_identity_header(h) and h not in set_headers]  # any case, _ for -, as the service
    return CheckResponse(
        status=RpcStatus(code=grpc.StatusCode.OK.value[0]),
        ok_response=OkHttpResponse(
            headers=_options(set_headers),
            headers_to_remove=remove,
            response_headers_to_add=_options(response_headers or {}),
        ),
    )


def deny_response(
    status: int = 403,
    body: str | bytes | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    challenges: Sequence[str] = ("Bearer",),
) -> CheckResponse:
    """A denial: ``body`` as given (a mapping becomes JSON), or gerrit-authz's JSON error shape by default.

    A 401 offers one ``www-authenticate`` line per scheme in ``challenges``, as gerrit-authz does for each configured
    credential kind (``("Basic", "Bearer")`` for a service taking Gerrit HTTP credentials and tokens)."""
    code, family = _DENIALS.get(status, (grpc.StatusCode.PERMISSION_DENIED, "denied"))
    all_headers = {"content-type": "application/json"}
    if body is None:
        body = {"error": family, "reason": "denied by FakeAuthorizer", "rule": "", "decision_id": uuid.uuid4().hex}
    if status == 503:
        all_headers["retry-after"] = "5"
    if isinstance(body, Mapping):
        text = json.dumps(body, separators=(",", ":"))
    else:
        text = body.decode() if isinstance(body, bytes) else body
        if headers is None or "content-type" not in {k.lower() for k in headers}:
            all_headers["content-type"] = "text/plain; charset=utf-8"
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    options = _options(all_headers)
    if status == 401 and "www-authenticate" not in all_headers:  # each its own line: the first replaces, the rest add
        options += [
            HeaderValueOption(
                header=HeaderValue(key="www-authenticate", value=f'{scheme} realm="gerrit-authz"'),
                append_action=_APPEND if i else _OVERWRITE,
            )
            for i, scheme in enumerate(challenges)
        ]
    return CheckResponse(
        status=RpcStatus(code=code.value[0], message=code.name.lower()),
        denied_response=DeniedHttpResponse(status=HttpStatus(code=status), headers=options, body=text),
    )


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeAuthorizer) -> None:
        self._fake = fake

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> CheckResponse:
        fake = self._fake
        fake.requests.append(request)
        fake.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        if fake.delay > 0:
            await asyncio.sleep(fake.delay)
        if fake._failure is not None:
            code, details = fake._failure
            await context.abort(code, details)
        answer = fake._handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer


def _unscripted(request: CheckRequest) -> CheckResponse:
    return deny_response(403, {"error": "not_scripted", "reason": "FakeAuthorizer: call allow(), deny() or respond()"})


class FakeAuthorizer:
    """An in-process, scriptable ``Authorization`` gRPC service; see the module documentation."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        #: Every CheckRequest received, in order.
        self.requests: list[CheckRequest] = []
        #: The gRPC metadata of each Check (e.g. the ``traceparent`` the middleware propagates), in order.
        self.metadata: list[dict[str, str]] = []
        #: Seconds to wait before answering each Check.
        self.delay = 0.0
        self._handler: Handler = _unscripted
        self._failure: tuple[grpc.StatusCode, str] | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def target(self) -> str:
        """``host:port`` for ``AuthzMiddleware(target=...)``; known once started."""
        if not self.port:
            raise RuntimeError("FakeAuthorizer is not started")
        return f"{self.host}:{self.port}"

    @property
    def last_request(self) -> CheckRequest:
        """The most recent CheckRequest (``IndexError`` when there was none)."""
        return self.requests[-1]

    # -- scripting ---------------------------------------------------------------------------------------------

    def allow(
        self,
        identity: AuthzIdentity | None = None,
        *,
        account_id: int | None = None,
        username: str = "",
        email: str = "",
        rule: str = "fake",
        headers: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> None:
        """Allow every following Check as ``identity`` (or the identity built from the keyword fields)."""
        if identity is None:
            identity = AuthzIdentity(
                account_id=account_id,
                username=username,
                email=email,
                rule=rule,
                authenticated=account_id is not None or bool(username),
            )
        who = identity
        self.respond(lambda req: allow_response(req, who, headers=headers, response_headers=response_headers))

    def deny(
        self,
        status: int = 403,
        body: str | bytes | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        challenges: Sequence[str] = ("Bearer",),
    ) -> None:
        """Deny every following Check with this HTTP status, body and headers (see :func:`deny_response`)."""
        self.respond(lambda req: deny_response(status, body, headers, challenges=challenges))

    def respond(self, handler: Handler) -> None:
        """Answer every following Check with ``handler(request)`` (a CheckResponse, or an awaitable of one)."""
        self._failure = None
        self._handler = handler

    def fail(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "FakeAuthorizer.fail") -> None:
        """Make every following Check fail as an RPC error (the middleware then fails closed, or open)."""
        self._failure = (code, details)

    def clear(self) -> None:
        """Forget the recorded requests."""
        self.requests.clear()
        self.metadata.clear()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> FakeAuthorizer:
        """Bind a free port and serve on the running loop."""
        server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        """Stop serving; in-flight Checks are cancelled."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> FakeAuthorizer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> FakeAuthorizer:
        # For synchronous tests: the server gets a loop of its own in a daemon thread.
        loop = asyncio.new_event_loop()
        self._thread_loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="FakeAuthorizer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
            self._thread_loop = self._thread = None
