"""CheckRequest → :class:`CheckInput`: a pure function and a frozen result.

Paths are normalised the way a careful upstream would read them, so a rule cannot be side-stepped by spelling
the same path differently: percent-encoded unreserved characters are decoded (``%61`` → ``a``), other escapes
are upper-cased (``%2f`` → ``%2F``, kept encoded so it stays inside its segment). Anything that an upstream
might read in more than one way is refused instead of guessed at: dot-segments (also encoded ones), empty
segments, backslashes, NUL and other control bytes, and invalid percent-encoding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.json_format import MessageToDict

from .errors import BadRequest

__all__ = ["CheckInput", "normalize_path", "parse_check_request"]

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x20\x7f\\]")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CheckInput:
    """Everything a decision may look at, taken from one CheckRequest."""

    method: str
    path: str  # normalised, without query
    query: str
    host: str
    scheme: str
    headers: Mapping[str, str]  # lower-cased names
    source_address: str = ""
    source_principal: str = ""
    request_id: str = ""
    context_extensions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


def _decode_unreserved(m: re.Match[str]) -> str:
    byte = int(m.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()


def normalize_path(raw: str) -> str:
    """Normalise a path (no query); raises :class:`BadRequest` for anything ambiguous."""
    if not raw.startswith("/"):
        raise BadRequest("malformed_path", "path must start with '/'")
    if _BAD_PERCENT.search(raw):
        raise BadRequest("malformed_path", "invalid percent-encoding in path")
    if _CONTROL_OR_BACKSLASH.search(raw):
        raise BadRequest("malformed_path", "control characters, spaces or backslashes in path")
    if ";" in raw:
        # Tomcat and Jetty drop ";params" before routing, so "/admin;x/y" would be "/admin/y" upstream while it
        # matched no "/admin/" rule here.
        raise BadRequest("malformed_path", "path parameters (';') are not allowed in path")
    path = _ESCAPE.sub(_decode_unreserved, raw) if "%" in raw else raw
    upper = path.upper()
    if "%00" in upper or "%5C" in upper:
        raise BadRequest("malformed_path", "encoded NUL or backslash in path")
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg.partition(";")[0] in (".", ".."):  # also "..;x": Tomcat/Jetty drop path parameters
            raise BadRequest("malformed_path", "dot-segments are not allowed in path")
        if seg == "" and i != len(segments) - 1:
            raise BadRequest("malformed_path", "empty path segment ('//')")
    return path


def parse_check_request(request: CheckRequest) -> CheckInput:
    """Turn Envoy's CheckRequest into a :class:`CheckInput`; raises :class:`BadRequest` when malformed."""
    attrs = request.attributes
    if not attrs.HasField("request") or not attrs.request.HasField("http"):
        raise BadRequest("malformed_request", "no HTTP request attributes in CheckRequest")
    http = attrs.request.http
    if http.header_map.headers:
        headers: dict[str, str] = {}
        for h in http.header_map.headers:
            try:
                value = h.value or h.raw_value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("malformed_request", f"header {h.key!r} is not valid UTF-8") from None
            name = h.key.lower()
            # Envoy joins repeated headers with ',' in `headers`; do the same for raw header_map.
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    else:
        headers = {k.lower(): v for k, v in http.headers.items()}
    raw_path = http.path or headers.get(":path", "")
    if not raw_path:
        raise BadRequest("malformed_request", "no path in CheckRequest")
    path, _, query = raw_path.partition("?")
    method = (http.method or headers.get(":method", "")).upper()
    if not method:
        raise BadRequest("malformed_request", "no method in CheckRequest")
    source = attrs.source
    return CheckInput(
        method=method,
        path=normalize_path(path),
        query=query,
        host=(http.host or headers.get(":authority", "")).lower(),
        scheme=http.scheme or headers.get(":scheme", ""),
        headers=headers,
        source_address=source.address.socket_address.address if source.HasField("address") else "",
        source_principal=source.principal,
        # x-request-id is what the upstream and Envoy's access log see; http.id is only a stream number.
        request_id=headers.get("x-request-id", "") or http.id,
        context_extensions=dict(attrs.context_extensions) or _EMPTY,
        metadata=(
            {k: MessageToDict(v) for k, v in attrs.metadata_context.filter_metadata.items()}
            if attrs.metadata_context.filter_metadata
            else _EMPTY
        ),
    )
