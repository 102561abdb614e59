"""ASGI scope → the ``CheckRequest`` Envoy would send, and the header edits an ``OkHttpResponse`` asks for.

The CheckRequest itself comes from :func:`authz_server.checkrequest.build_check_request`, the one builder shared
with the service's own tools, so the middleware cannot drift from what Envoy (and the tests) send.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from starlette.types import Scope

from authz_server.checkrequest import build_check_request, is_identity_header, join_headers

from ._tls import client_cert_principal

__all__ = [
    "RawHeaders",
    "apply_header_options",
    "apply_query_mutations",
    "check_request_from_scope",
    "strip_protected",
]

RawHeaders = list[tuple[bytes, bytes]]

# Envoy drops connection-specific headers before its filters run (RFC 9110 §7.6.1), and sends Host only as
# :authority; for an upgrade (websocket) request it keeps `connection` and `upgrade`.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"})
_UPGRADE_KEPT = frozenset({"connection", "upgrade"})

# HeaderValueOption.HeaderAppendAction values (envoy/config/core/v3/base.proto).
_APPEND_IF_EXISTS_OR_ADD = 0
_ADD_IF_ABSENT = 1
_OVERWRITE_IF_EXISTS_OR_ADD = 2
_OVERWRITE_IF_EXISTS = 3


def _text(raw: bytes) -> str:
    # Protobuf strings must be UTF-8; an odd non-UTF-8 header must not turn into a failed Check.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def request_target(scope: Scope) -> str:
    """Path and query as the client sent them (``%2F`` stays encoded: it matters to the policy)."""
    path: str = scope["path"]
    raw = scope.get("raw_path")
    target = ""
    if raw:
        # Some servers (old httpx ASGITransport) leave the query in raw_path; ASGI says it must not be there.
        target = raw.decode("latin-1").partition("?")[0]
        # raw_path is only trusted while it still says what `path` says: if something in front of us rewrote
        # `path` (and forgot raw_path), authorizing the stale raw_path would authorize a different route.
        if unquote(target) != path:
            target = ""
    if not target:
        target = quote(path, safe="/:@!$&'()*+,;=")
    query: bytes = scope.get("query_string", b"")
    return f"{target}?{query.decode('latin-1')}" if query else target


def check_request_from_scope(
    scope: Scope, context_extensions: Mapping[str, str] | None = None
) -> tuple[CheckRequest, str, bool]:
    """The CheckRequest for an ``http`` or ``websocket`` scope, its request id, and whether that id is new."""
    websocket = scope["type"] == "websocket"
    dropped = _HOP_BY_HOP - _UPGRADE_KEPT if websocket else _HOP_BY_HOP
    pairs: list[tuple[str, str]] = []
    host = ""
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name == "host":
            host = _text(raw_value)
        if name not in dropped:
            pairs.append((name, _text(raw_value)))
    headers = join_headers(pairs)
    if not host:
        server = scope.get("server")
        if server and server[0]:
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    request_id = headers.get("x-request-id", "")
    generated = not request_id
    if generated:
        request_id = str(uuid.uuid4())
    scheme = str(scope.get("scheme") or ("ws" if websocket else "http"))
    # Envoy reports the HTTP scheme of a websocket upgrade (:scheme is http or https, never ws/wss).
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    version = str(scope.get("http_version", "1.1"))
    client = scope.get("client")
    request = build_check_request(
        "GET" if websocket else str(scope["method"]),
        request_target(scope),
        host=host,
        scheme=scheme,
        headers=headers,
        protocol="HTTP/2" if version.startswith("2") else f"HTTP/{version}",
        request_id=request_id,
        source_address=str(client[0]) if client else "",
        source_port=int(client[1] or 0) if client else 0,
        source_principal=client_cert_principal(scope),
        context_extensions=context_extensions,
    )
    return request, request_id, generated


def strip_protected(headers: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """Drop every ``x-gerrit-*`` / ``x-authz-*`` header, in any case and with ``_`` for ``-`` (WSGI servers read
    ``x_gerrit_account_id`` as ``HTTP_X_GERRIT_ACCOUNT_ID``): only the service's answer may supply them."""
    return [(k, v) for k, v in headers if not is_identity_header(k.decode("latin-1"))]


def apply_header_options(headers: RawHeaders, options: Sequence[Any], remove: Iterable[str] = ()) -> RawHeaders:
    """Apply ``HeaderValueOption`` edits the way Envoy does, then the removals (the contract: removals last).

    ``append`` (deprecated BoolValue) wins when present: true appends, false overwrites; otherwise
    ``append_action`` decides. Appending adds another header line, as Envoy's ``addCopy`` does.
    """
    out = list(headers)
    # This runs for every allowed request: track names in a set instead of rescanning the list per option.
    names = {k.lower() for k, _ in out}
    for option in options:
        header = option.header
        name = header.key.lower().encode("latin-1")
        value = header.value.encode("utf-8") if header.value else bytes(header.raw_value)
        if option.HasField("append"):
            action = _APPEND_IF_EXISTS_OR_ADD if option.append.value else _OVERWRITE_IF_EXISTS_OR_ADD
        else:
            action = int(option.append_action)
        present = name in names
        if action == _APPEND_IF_EXISTS_OR_ADD or (action == _ADD_IF_ABSENT and not present):
            out.append((name, value))
            names.add(name)
        elif action == _OVERWRITE_IF_EXISTS_OR_ADD or (action == _OVERWRITE_IF_EXISTS and present):
            if present:
                out = [(k, v) for k, v in out if k.lower() != name]
            out.append((name, value))
            names.add(name)
    drop = {r.lower().encode("latin-1") for r in remove}
    # Envoy never lets an authorizer remove pseudo-headers or Host; neither do we.
    drop.discard(b"host")
    return [(k, v) for k, v in out if k.lower() not in drop] if drop else out


def apply_query_mutations(query: bytes, set_params: Sequence[Any], remove: Sequence[str]) -> bytes:
    """``OkHttpResponse.query_parameters_to_set`` / ``_to_remove`` applied to a query string."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    gone = set(remove) | {p.key for p in set_params}
    pairs = [(k, v) for k, v in pairs if k not in gone] + [(p.key, p.value) for p in set_params]
    return urlencode(pairs).encode("latin-1")
