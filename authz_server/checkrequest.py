"""Build the ``CheckRequest`` Envoy would send for an HTTP request.

One builder for everything that is not Envoy: the Admin API's Explain, ``gerrit-authz explain``, the FastAPI
middleware and the tests, so they cannot drift apart from each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

__all__ = [
    "IDENTITY_HEADERS",
    "IDENTITY_HEADER_PREFIXES",
    "build_check_request",
    "is_identity_header",
    "join_headers",
]

#: Request headers only gerrit-authz may set on the way upstream: client-sent ones are overwritten or removed,
#: by the Check's answer behind Envoy and by the FastAPI middleware without it.
IDENTITY_HEADER_PREFIXES = ("x-gerrit-", "x-authz-")

#: The headers gerrit-authz sets on an allowed request: always overwritten or removed, whether or not sent.
IDENTITY_HEADERS = (
    "x-gerrit-account-id",
    "x-gerrit-username",
    "x-gerrit-email",
    "x-authz-rule",
    "x-authz-decision-id",
    "x-authz-shadow",
)


def is_identity_header(name: str) -> bool:
    """Whether ``name`` (any case, ``_`` or ``-``) reads as an identity header to some upstream.

    WSGI/CGI servers turn both ``x-gerrit-account-id`` and ``x_gerrit_account_id`` into
    ``HTTP_X_GERRIT_ACCOUNT_ID``, and header names are case-insensitive everywhere.
    """
    return name.lower().replace("_", "-").startswith(IDENTITY_HEADER_PREFIXES)


def join_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names and join repeated headers with ',' as Envoy does (RFC 9110 field-line combination)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def build_check_request(
    method: str,
    path: str,
    *,
    host: str = "",
    scheme: str = "http",
    headers: Mapping[str, str] | None = None,
    protocol: str = "HTTP/1.1",
    request_id: str = "",
    source_address: str = "",
    source_port: int = 0,
    source_principal: str = "",
    context_extensions: Mapping[str, str] | None = None,
) -> CheckRequest:
    """A CheckRequest with ``attributes.request.http`` filled like Envoy fills it.

    ``path`` includes the query string, as on the wire. ``headers`` must already be lower-cased and joined (see
    :func:`join_headers`); the HTTP/2-style pseudo-headers Envoy adds are added here. ``source_principal`` is
    the verified client certificate's principal as Envoy reports it: URI SAN, else DNS SAN, else subject (only
    pass one that was verified).
    """
    all_headers = {":method": method, ":path": path, ":authority": host, ":scheme": scheme, **(headers or {})}
    if request_id:
        all_headers.setdefault("x-request-id", request_id)
    http = AttributeContext.HttpRequest(
        id=request_id, method=method, path=path, host=host, scheme=scheme, protocol=protocol, headers=all_headers
    )
    attrs = AttributeContext(
        request=AttributeContext.Request(http=http), context_extensions=dict(context_extensions or {})
    )
    if source_address:
        attrs.source.address.CopyFrom(
            Address(socket_address=SocketAddress(address=source_address, port_value=source_port))
        )
    if source_principal:
        attrs.source.principal = source_principal
    return CheckRequest(attributes=attrs)
