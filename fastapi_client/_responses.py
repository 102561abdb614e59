"""Answers the middleware sends itself, straight through the ASGI ``send``: denials and "service unavailable".

A denial is passed on exactly as the service shaped it (status, headers, body). For a websocket, a denial before
``accept`` uses the ``websocket.http.response`` extension when the server offers it (the client then sees the
real 401/403 and its body); otherwise the only thing ASGI allows is closing the handshake.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from starlette.types import Scope, Send

__all__ = ["WS_POLICY_VIOLATION", "WS_TRY_AGAIN_LATER", "send_denied", "send_unavailable"]

#: RFC 6455 close codes when the server cannot send an HTTP response to a websocket handshake.
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013

_DEFAULT_DENIED = 403  # Envoy's answer when a denial carries no HTTP status


async def _send_response(
    scope: Scope, send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, close_code: int
) -> None:
    out = list(headers)
    if not any(k == b"content-length" for k, _ in out):
        out.append((b"content-length", str(len(body)).encode()))
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": close_code, "reason": ""})
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": out})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_denied(scope: Scope, send: Send, response: CheckResponse) -> None:
    """Send ``denied_response`` (or ``error_response``, an undecided 503) as is: e.g. a 401 keeps its
    ``www-authenticate`` challenge, a 503 its ``retry-after``."""
    denied = response.error_response if response.HasField("error_response") else response.denied_response
    status = int(denied.status.code) or _DEFAULT_DENIED
    headers = []
    for option in denied.headers:
        value = option.header.value.encode("utf-8") if option.header.value else bytes(option.header.raw_value)
        headers.append((option.header.key.lower().encode("latin-1"), value))
    await _send_response(scope, send, status, headers, denied.body.encode("utf-8"), WS_POLICY_VIOLATION)


async def send_unavailable(scope: Scope, send: Send, *, request_id: str, retry_after: int) -> None:
    """Fail closed: 503 in the service's own error shape, so clients handle one format."""
    body = json.dumps(
        {
            "error": "authz_unavailable",
            "reason": "the authorization service did not answer; try again later",
            "rule": "",
            "decision_id": "",
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode())]
    await _send_response(scope, send, 503, headers, body, WS_TRY_AGAIN_LATER)
