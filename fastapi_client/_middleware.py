"""``AuthzMiddleware``: ask gerrit-authz about every HTTP request and websocket handshake, as Envoy's ext_authz would.

Pure ASGI (no ``BaseHTTPMiddleware``): nothing is buffered, websockets and streaming bodies pass untouched, and
everything about one request lives in local variables of that request's call, never on ``self``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._channel import DEFAULT_CHANNEL_OPTIONS, ChannelPool
from ._identity import AuthzIdentity, AuthzUser, credentials_for, identity_from_headers
from ._request import (
    RawHeaders,
    apply_header_options,
    apply_query_mutations,
    check_request_from_scope,
    strip_protected,
)
from ._responses import send_denied, send_unavailable
from ._service_tls import ServiceTls
from ._tracecontext import trace_metadata

__all__ = ["AuthzMiddleware"]

log = logging.getLogger("fastapi_client.authz")

_OK = grpc.StatusCode.OK.value[0]
_LIFESPAN_DONE = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})


class AuthzMiddleware:
    """Authorize each ``http`` and ``websocket`` request with gerrit-authz before the app sees it.

    ``app.add_middleware(AuthzMiddleware, target="127.0.0.1:9001")``

    Args:
        target: the gerrit-authz ext_authz gRPC address (``host:port`` or any gRPC target URI).
        timeout: seconds one Check may take; past it the request fails closed (503) or, with ``fail_open``, passes.
        fail_open: when the service is unreachable, times out or errs, or answers that it could not decide
            (``error_response``: Gerrit unreachable), let the request through with an unauthenticated
            ``request.state.authz`` (and a WARNING log line) instead of answering 503.
            Spoofable ``x-gerrit-*``/``x-authz-*`` headers are stripped either way.
        exclude_paths: paths (exact match on the decoded path) that are not checked, e.g. ``("/healthz",)``.
        exclude_prefixes: path prefixes that are not checked, e.g. ``("/static/",)``. Paths with ``.``/``..``
            segments are always checked, so ``/static/../admin`` cannot borrow an exclusion.
        allow_cors_preflight: let ``OPTIONS`` requests carrying ``access-control-request-method`` through
            unchecked (browsers send preflights without credentials).
        context_extensions: ``attributes.context_extensions`` for every Check, as Envoy's per-route setting.
        credentials: gRPC channel credentials for a TLS target (default: plaintext, for a loopback sidecar).
        tls: :class:`ServiceTls` (CA, client certificate) for a TLS target, its files re-read when they change;
            instead of ``credentials``.
        channel_options: gRPC channel options (default: a short reconnect backoff).
        retry_after: the ``retry-after`` seconds of the 503 sent when the service is unavailable.

    On allow, the request headers the app sees get the service's ``ok_response`` edits, and the identity is
    ``request.state.authz`` (:class:`AuthzIdentity`), ``request.user`` and ``request.auth``. On deny, the
    service's status, headers and body go to the client as they are, and the app is not called.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        target: str = "127.0.0.1:9001",
        timeout: float = 0.5,
        fail_open: bool = False,
        exclude_paths: Iterable[str] = (),
        exclude_prefixes: Iterable[str] = (),
        allow_cors_preflight: bool = False,
        context_extensions: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        retry_after: int = 5,
        tls: ServiceTls | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.app = app
        self.target = target
        self.timeout = timeout
        self.fail_open = fail_open
        self.exclude_paths = frozenset(exclude_paths)
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.allow_cors_preflight = allow_cors_preflight
        self.context_extensions = dict(context_extensions or {})
        self.retry_after = retry_after
        self.channels = ChannelPool(target, credentials=credentials, options=channel_options, tls=tls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
        elif self._bypass(scope):
            await self.app(_with_identity(scope, strip_protected(scope.get("headers", ())), None), receive, send)
        else:
            await self._authorize(scope, receive, send)

    def _bypass(self, scope: Scope) -> bool:
        """Excluded paths and (when enabled) CORS preflights skip the Check."""
        path: str = scope["path"]
        if (path in self.exclude_paths or (self.exclude_prefixes and path.startswith(self.exclude_prefixes))) and (
            # A dot-segment would let a prefix like "/static/" cover "/static/../admin" for a lax router.
            not any(seg in (".", "..") for seg in path.split("/"))
        ):
            return True
        if self.allow_cors_preflight and scope["type"] == "http" and scope["method"] == "OPTIONS":
            return any(k.lower() == b"access-control-request-method" for k, _ in scope.get("headers", ()))
        return False

    async def _authorize(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, request_id, generated_id = check_request_from_scope(scope, self.context_extensions)
        try:
            response = await self.channels.check()(request, timeout=self.timeout, metadata=trace_metadata())
        except grpc.aio.AioRpcError as exc:
            await self._unavailable(scope, receive, send, request_id, f"{exc.code().name}: {exc.details()}")
            return
        except Exception as exc:  # never allow on error: anything unexpected is "unavailable" too
            log.exception("authorization check failed (request %s)", request_id)
            await self._unavailable(scope, receive, send, request_id, type(exc).__name__)
            return
        if response.status.code != _OK:
            if response.HasField("error_response") and self.fail_open:
                # The service could not decide (e.g. Gerrit down): an error, as Envoy's failure_mode_allow reads it.
                await self._unavailable(scope, receive, send, request_id, f"undecided: {response.status.message}")
                return
            await send_denied(scope, send, response)  # a deny, or an undecided 503 exactly as the service shaped it
            return
        # Client-sent identity headers are never trusted, whatever the service's answer lists for removal.
        headers = strip_protected(scope.get("headers", ()))
        if generated_id:
            # Envoy adds the x-request-id it generated to the upstream request; so do we, for log correlation.
            headers.append((b"x-request-id", request_id.encode()))
        ok = response.ok_response
        headers = apply_header_options(headers, ok.headers, ok.headers_to_remove)
        set_headers = {o.header.key.lower(): o.header.value for o in ok.headers}
        metadata = None
        if "x-authz-rule" not in set_headers and response.HasField("dynamic_metadata"):
            # Only an authorizer other than gerrit-authz omits the headers; metadata is the fallback.
            metadata = MessageToDict(response.dynamic_metadata)
        inner = _with_identity(scope, headers, identity_from_headers(set_headers, metadata))
        if ok.query_parameters_to_set or ok.query_parameters_to_remove:
            inner["query_string"] = apply_query_mutations(
                scope.get("query_string", b""), ok.query_parameters_to_set, ok.query_parameters_to_remove
            )
        if ok.response_headers_to_add:
            send = _adding_response_headers(send, ok.response_headers_to_add)
        await self.app(inner, receive, send)

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, request_id: str, why: str) -> None:
        if self.fail_open:
            log.warning(
                "authorization service %s unavailable (%s); fail_open lets request %s through unauthenticated",
                self.target,
                why,
                request_id,
            )
            inner = _with_identity(scope, strip_protected(scope.get("headers", ())), AuthzIdentity.anonymous())
            await self.app(inner, receive, send)
            return
        log.warning("authorization service %s unavailable (%s); request %s refused", self.target, why, request_id)
        await send_unavailable(scope, send, request_id=request_id, retry_after=self.retry_after)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through; close this loop's channel when the app has shut down."""

        async def send_wrapper(message: Message) -> None:
            if message["type"] in _LIFESPAN_DONE:
                # Before acknowledging: the server may stop the loop right after the acknowledgement.
                await self.channels.close()
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _with_identity(scope: Scope, headers: RawHeaders, identity: AuthzIdentity | None) -> Scope:
    """A copy of ``scope`` with new headers and the identity where Starlette and FastAPI look for it."""
    inner = dict(scope)
    inner["headers"] = headers
    state = scope.get("state")
    if state is None:
        state = inner["state"] = {}
    # `state` is per request (servers copy the lifespan state into each request's scope), so writing is safe.
    state["authz"] = identity
    inner["user"] = AuthzUser(identity)
    inner["auth"] = credentials_for(identity)
    return inner


def _adding_response_headers(send: Send, options: Sequence[Any]) -> Send:
    """``response_headers_to_add`` go into the response start (or the websocket accept)."""

    async def wrapped(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            message = dict(message)
            message["headers"] = apply_header_options(list(message.get("headers", ())), options)
        await send(message)

    return wrapped
