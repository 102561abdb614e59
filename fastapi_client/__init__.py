"""FastAPI/Starlette middleware asking gerrit-authz for each request, as Envoy's ext_authz filter would.

    from fastapi import FastAPI
    from fastapi_client import AuthzMiddleware, CurrentIdentity

    app = FastAPI()
    app.add_middleware(AuthzMiddleware, target="127.0.0.1:9001", exclude_paths=("/healthz",))

    @app.get("/me")
    async def me(who: CurrentIdentity) -> dict[str, object]:
        return {"username": who.username, "account_id": who.account_id}

``install_openapi_security(app)`` lists the HTTP Bearer / Basic schemes in the OpenAPI document (Swagger UI's
"Authorize"). Tests can replace the service with :class:`fastapi_client.testing.FakeAuthorizer`.
"""

from __future__ import annotations

from ._identity import AuthzIdentity, AuthzUser
from ._middleware import AuthzMiddleware
from ._openapi import install_openapi_security
from ._service_tls import ServiceTls
from .dependencies import CurrentIdentity, OptionalIdentity, current_identity, optional_identity

__all__ = [
    "AuthzIdentity",
    "AuthzMiddleware",
    "AuthzUser",
    "CurrentIdentity",
    "OptionalIdentity",
    "ServiceTls",
    "current_identity",
    "install_openapi_security",
    "optional_identity",
]
