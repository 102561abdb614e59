"""FastAPI dependencies for handlers: the identity the middleware established.

Usage::

    @app.get("/me")
    async def me(who: CurrentIdentity) -> dict[str, str]:  # or: who: AuthzIdentity = Depends(current_identity)
        return {"username": who.username}
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from ._identity import AuthzIdentity

__all__ = ["CurrentIdentity", "OptionalIdentity", "current_identity", "optional_identity"]

_CHALLENGE = {"www-authenticate": 'Bearer realm="gerrit-authz"'}


def optional_identity(connection: HTTPConnection) -> AuthzIdentity | None:
    """The authenticated caller, or ``None`` (anonymous, excluded path, or ``fail_open`` without a decision)."""
    identity = connection.scope.get("state", {}).get("authz")
    if isinstance(identity, AuthzIdentity) and identity.authenticated:
        return identity
    return None


def current_identity(connection: HTTPConnection) -> AuthzIdentity:
    """The authenticated caller; 401 with the service's challenge when there is none.

    Normally the service has already refused anonymous requests to routes that need an account; this guards
    routes that the policy lets anyone reach (or that are excluded from checks) but that need an account.
    """
    identity = optional_identity(connection)
    if identity is None:
        raise HTTPException(status_code=401, detail="authentication required", headers=_CHALLENGE)
    return identity


#: ``who: CurrentIdentity`` in a handler's signature: the authenticated caller, or 401.
CurrentIdentity = Annotated[AuthzIdentity, Depends(current_identity)]
#: ``who: OptionalIdentity``: the authenticated caller or ``None``.
OptionalIdentity = Annotated[AuthzIdentity | None, Depends(optional_identity)]
