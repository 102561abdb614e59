"""The error hierarchy of gerrit-authz.

Every failure carries a stable ``code`` string. Library exceptions (httpx, PyJWT, redis) are translated into these
at the boundary where they happen; one table (:data:`STATUS`) maps each error family to the gRPC code and HTTP
status the caller sees, so the Check servicer, the CLI and the FastAPI client all agree.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from grpc import StatusCode

__all__ = [
    "STATUS",
    "AuthzError",
    "BadRequest",
    "ConfigError",
    "PermissionDenied",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "status_for",
]


class AuthzError(Exception):
    """Base class: a decision-relevant failure with a stable ``code``."""

    family: ClassVar[str] = "internal"

    def __init__(self, code: str, reason: str, *, detail: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        #: extra text for the Explain trace (e.g. Gerrit's own error body); never a credential.
        self.detail = detail


class BadRequest(AuthzError):
    """The request itself is malformed (400)."""

    family = "bad_request"


class Unauthenticated(AuthzError):
    """No credential where one is required, or an invalid one (401)."""

    family = "unauthenticated"


class PermissionDenied(AuthzError):
    """Authenticated, but a requirement fails or no rule matches (403)."""

    family = "permission_denied"


class Unavailable(AuthzError):
    """A dependency (Gerrit, the OIDC issuer) cannot answer and no usable cached answer exists (503).

    ``transient`` marks an outage (unreachable, timed out, 5xx, 429): only then may an expired cached answer
    stand in. A definite but unusable answer (the service account refused, a garbled body) is not transient.
    """

    family = "unavailable"

    def __init__(self, code: str, reason: str, *, detail: str = "", transient: bool = False) -> None:
        super().__init__(code, reason, detail=detail)
        self.transient = transient


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists ``(key path, reason)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in errors))
        self.errors = errors


class Status(NamedTuple):
    grpc: StatusCode
    http: int


#: The one place where an error family becomes a gRPC code and an HTTP status.
STATUS: dict[str, Status] = {
    "ok": Status(StatusCode.OK, 200),
    BadRequest.family: Status(StatusCode.INVALID_ARGUMENT, 400),
    Unauthenticated.family: Status(StatusCode.UNAUTHENTICATED, 401),
    PermissionDenied.family: Status(StatusCode.PERMISSION_DENIED, 403),
    Unavailable.family: Status(StatusCode.UNAVAILABLE, 503),
    # Anything unexpected is a 503 too: never allow on error, and let the client retry.
    AuthzError.family: Status(StatusCode.UNAVAILABLE, 503),
}


def status_for(error: AuthzError | None) -> Status:
    """The gRPC code and HTTP status for ``error`` (``None`` means allowed)."""
    return STATUS["ok"] if error is None else STATUS[error.family]
