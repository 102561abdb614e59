"""CheckRequest → :class:`CheckInput`: a pure function and a frozen result.

Paths are read the way the upstream reads them (contract: "One path, one rule"): every percent-escape is decoded
before matching (``%2B`` is ``+``, ``%61`` is ``a``) except two, which stay escaped so the decoded path keeps
one spelling per meaning: ``%2F`` (an encoded slash stays inside its segment) and ``%25`` (a literal ``%``, so
``%252F`` is the three characters ``%2F`` and is never decoded twice). Anything an upstream might read in more
than one way is refused instead of guessed at: dot-segments (also encoded ones), empty segments, backslashes,
NUL and other control bytes, invalid percent-encoding or UTF-8, and paths over :data:`MAX_PATH_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.json_format import MessageToDict

from .errors import BadRequest

__all__ = ["MAX_PATH_BYTES", "CheckInput", "canonical_path", "normalize_path", "parse_check_request", "slash_view"]

#: The contract's bound: a longer path is refused (400 ``path_too_long``) before any matching.
MAX_PATH_BYTES = 8192

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# bytes.translate deletes every allowed byte in C: what is left is forbidden (a regex scan of 8 KiB is 10x slower).
_RAW_ALLOWED = bytes(b for b in range(256) if b > 0x20 and b not in (0x7F, 0x5C))
# After decoding: a space is an ordinary character, but control bytes and backslashes still are not.
_DECODED_ALLOWED = bytes(b for b in range(256) if b >= 0x20 and b not in (0x7F, 0x5C))
_KEPT = {b"2F": b"%2F", b"2f": b"%2F", b"25": b"%25"}
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CheckInput:
    """Everything a decision may look at, taken from one CheckRequest."""

    method: str
    path: str  # canonical (see canonical_path), without query
    query: str
    host: str
    scheme: str
    headers: Mapping[str, str]  # lower-cased names
    source_address: str = ""
    source_principal: str = ""
    request_id: str = ""
    context_extensions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: the path was sent spelled otherwise (percent-escapes decoded into ``path``): a router matching the spelling
    #: as sent (Envoy without ``normalize_path``) may have chosen another route, and so other context_extensions
    decoded: bool = False


def _decode(m: re.Match[bytes]) -> bytes:
    kept = _KEPT.get(m.group(1))
    return kept if kept is not None else bytes((int(m.group(1), 16),))


def canonical_path(text: str) -> str:
    """Decode every escape but ``%2F`` and ``%25`` (both upper-cased); raises :class:`BadRequest` on bad UTF-8.

    Also used for template literals, so ``/src/{p}/%2B/...`` in a config and ``+`` in a path are the same thing.
    """
    if "%" not in text:
        return text
    try:
        return _ESCAPE.sub(_decode, text.encode("utf-8")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("malformed_path", "the path is not valid UTF-8 once decoded") from None


def slash_view(path: str) -> str:
    """``path`` as an upstream that decodes ``%2F`` before routing (Starlette, Flask) sees it."""
    return path.replace("%2F", "/")


# A "." or ".." segment, also with ";params" (Tomcat and Jetty drop them before resolving dot-segments).
_DOT_SEGMENT = re.compile(r"/\.\.?(?:;[^/]*)?(?=/|$)")


def _check_segments(path: str, what: str) -> None:
    # Regular expressions and `in` rather than a loop over segments: an 8 KiB path has thousands of them.
    if "//" in path:
        raise BadRequest("malformed_path", f"empty path segment ('//'){what}")
    if "/." in path and _DOT_SEGMENT.search(path):
        raise BadRequest("malformed_path", f"dot-segments are not allowed in path{what}")


def normalize_path(raw: str) -> str:
    """The canonical path (no query) that rules match; raises :class:`BadRequest` for anything ambiguous."""
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no protobuf string carries one, but never crash on it
        raise BadRequest("malformed_path", "the path is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise BadRequest("path_too_long", f"path longer than {MAX_PATH_BYTES} bytes")
    if not raw.startswith("/"):
        raise BadRequest("malformed_path", "path must start with '/'")
    if "%" in raw and _BAD_PERCENT.search(raw):
        raise BadRequest("malformed_path", "invalid percent-encoding in path")
    if encoded.translate(None, _RAW_ALLOWED):
        raise BadRequest("malformed_path", "control characters, spaces or backslashes in path")
    if ";" in raw:
        # Tomcat and Jetty drop ";params" before routing, so "/admin;x/y" would be "/admin/y" upstream while it
        # matched no "/admin/" rule here.
        raise BadRequest("malformed_path", "path parameters (';') are not allowed in path")
    path = canonical_path(raw)
    if path is not raw and path.encode("utf-8").translate(None, _DECODED_ALLOWED):
        raise BadRequest("malformed_path", "encoded NUL, control byte or backslash in path")
    _check_segments(path, "")
    if "%2F" in path:
        # "a%2F..%2Fb" is one segment here but "a/../b" to an upstream that decodes it: refuse, never guess.
        _check_segments(slash_view(path), " once '%2F' is decoded")
    return path


def _header_text(raw: bytes) -> str:
    # encode_raw_headers sends the bytes as received; HTTP field values are historically ISO-8859-1 (RFC 9110
    # §5.5), so a non-UTF-8 byte is read as latin-1 rather than failing the whole request.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_check_request(request: CheckRequest) -> CheckInput:
    """Turn Envoy's CheckRequest into a :class:`CheckInput`; raises :class:`BadRequest` when malformed."""
    attrs = request.attributes
    if not attrs.HasField("request") or not attrs.request.HasField("http"):
        raise BadRequest("malformed_request", "no HTTP request attributes in CheckRequest")
    http = attrs.request.http
    if http.header_map.headers:
        headers: dict[str, str] = {}
        for h in http.header_map.headers:
            value = h.value or _header_text(h.raw_value)
            name = h.key.lower()
            # Envoy joins repeated headers with ',' in `headers`; do the same for raw header_map.
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    else:
        # Envoy sends lower-cased names (as attribute_context.proto requires); any other caller's are lowered here.
        # dict() copies the protobuf map in C, where .items() would iterate it in Python.
        headers = dict(http.headers)
        if not all(map(str.islower, headers)):
            headers = {k.lower(): v for k, v in headers.items()}
    raw_path = http.path or headers.get(":path", "")
    if not raw_path:
        raise BadRequest("malformed_request", "no path in CheckRequest")
    path, _, query = raw_path.partition("?")
    method = (http.method or headers.get(":method", "")).upper()
    if not method:
        raise BadRequest("malformed_request", "no method in CheckRequest")
    source = attrs.source
    extensions = attrs.context_extensions
    filter_metadata = attrs.metadata_context.filter_metadata
    canonical = _normalized(path) if len(path) <= _KEPT_PATH_CHARS else normalize_path(path)
    return CheckInput(  # positional: keyword arguments cost a frozen dataclass half its construction time
        method,
        canonical,
        query,
        (http.host or headers.get(":authority", "")).lower(),  # host
        http.scheme or headers.get(":scheme", ""),  # scheme
        headers,
        source.address.socket_address.address if source.HasField("address") else "",  # source_address
        source.principal,  # source_principal
        # request_id: x-request-id is what the upstream and Envoy's access log see; http.id is only a stream number.
        headers.get("x-request-id", "") or http.id,
        dict(extensions) if extensions else _EMPTY,  # context_extensions
        {k: MessageToDict(v) for k, v in filter_metadata.items()} if filter_metadata else _EMPTY,  # metadata
        canonical != path,  # decoded
    )


#: Paths of up to this many characters have their canonical form kept (the most recent 4,096: 16 MiB at most).
_KEPT_PATH_CHARS = 1024
_normalized = lru_cache(maxsize=4096)(normalize_path)  # a pure function; a refused path raises and is not kept
