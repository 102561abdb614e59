"""Security schemes in the app's OpenAPI document, so Swagger UI's "Authorize" button sends real credentials.

The schemes are the ones the configured identity sources accept: ``jwt`` and ``envoy_jwt_metadata`` take an
``authorization: Bearer`` JWT, ``gerrit_http_credentials`` HTTP Basic, ``mtls`` a client certificate (OpenAPI
3.1 ``mutualTLS``; browsers choose the certificate themselves). Every operation lists them as alternatives;
excluded paths are not touched, since the middleware never asks the service about them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

__all__ = ["SCHEMES", "install_openapi_security"]

#: identity source name -> (scheme name, OpenAPI security scheme object)
SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "jwt": ("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
    "envoy_jwt_metadata": ("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
    "gerrit_http_credentials": (
        "basicAuth",
        {"type": "http", "scheme": "basic", "description": "Gerrit username and HTTP password"},
    ),
    "mtls": ("mutualTLS", {"type": "mutualTLS", "description": "a client certificate the proxy verifies"}),
}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def install_openapi_security(
    app: FastAPI,
    identity: Iterable[str] = ("jwt", "gerrit_http_credentials"),
    *,
    exclude_paths: Iterable[str] = (),
) -> None:
    """Add the security schemes that the identity sources ``identity`` imply to ``app.openapi()``.

    ``identity`` names sources as in the service's ``identity:`` list, in order (see :data:`SCHEMES`).
    ``exclude_paths`` are prefixes left without a security requirement (pass the middleware's ``exclude_paths``).
    """
    schemes: dict[str, dict[str, Any]] = {}
    for source in identity:
        if source not in SCHEMES:
            raise ValueError(f"unknown identity source {source!r} (expected one of {sorted(SCHEMES)})")
        name, scheme = SCHEMES[source]
        schemes.setdefault(name, scheme)
    excluded = tuple(exclude_paths)
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = original()
        doc.setdefault("components", {}).setdefault("securitySchemes", {}).update(schemes)
        security: list[dict[str, list[str]]] = [{name: []} for name in schemes]
        for path, item in doc.get("paths", {}).items():
            if any(path.startswith(prefix) for prefix in excluded):
                continue
            for method in _METHODS:
                if method in item:
                    item[method].setdefault("security", security)
        app.openapi_schema = doc
        return doc

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]
