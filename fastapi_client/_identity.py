"""Who the service said the caller is: :class:`AuthzIdentity` and its Starlette face, :class:`AuthzUser`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser

__all__ = ["AuthzIdentity", "AuthzUser", "credentials_for", "identity_from_headers"]

#: The upstream headers gerrit-authz sets on an allowed request (contract: "Allowed").
ACCOUNT_ID = "x-gerrit-account-id"
USERNAME = "x-gerrit-username"
EMAIL = "x-gerrit-email"
RULE = "x-authz-rule"
DECISION_ID = "x-authz-decision-id"


@dataclass(frozen=True, slots=True)
class AuthzIdentity:
    """The outcome of an allowed Check, as ``request.state.authz``.

    ``authenticated`` is true when the service named a Gerrit account (``x-gerrit-account-id``) or a username.
    A request allowed by an ``anyone`` rule, or let through by ``fail_open``, has ``authenticated=False``; with
    ``fail_open`` the ``rule`` and ``decision_id`` are empty because no decision was made.
    """

    account_id: int | None = None
    username: str = ""
    email: str = ""
    rule: str = ""
    decision_id: str = ""
    authenticated: bool = False

    @classmethod
    def anonymous(cls, *, rule: str = "", decision_id: str = "") -> AuthzIdentity:
        """An identity with no account: allowed without credentials, or not checked at all."""
        return cls(rule=rule, decision_id=decision_id)


def identity_from_headers(headers: Mapping[str, str], metadata: Mapping[str, Any] | None = None) -> AuthzIdentity:
    """Read the identity from the headers of ``ok_response`` (falling back to ``dynamic_metadata``).

    The headers are what the service promises in the contract; the metadata only fills gaps, e.g. when a custom
    authorizer sends no identity headers.
    """
    meta = metadata or {}
    raw_id = headers.get(ACCOUNT_ID) or str(meta.get("account_id") or "")
    try:
        # dynamic_metadata is a protobuf Struct: numbers arrive as floats ("1000001.0" once stringified).
        account_id: int | None = int(float(raw_id)) if raw_id else None
    except ValueError:
        account_id = None
    username = headers.get(USERNAME) or str(meta.get("username") or "")
    return AuthzIdentity(
        account_id=account_id,
        username=username,
        email=headers.get(EMAIL, ""),
        rule=headers.get(RULE) or str(meta.get("rule") or ""),
        decision_id=headers.get(DECISION_ID) or str(meta.get("decision_id") or ""),
        authenticated=account_id is not None or bool(username),
    )


class AuthzUser(BaseUser):
    """``request.user``: a Starlette user backed by an :class:`AuthzIdentity` (or by none, when not checked)."""

    __slots__ = ("authz",)

    def __init__(self, authz: AuthzIdentity | None) -> None:
        self.authz = authz

    @property
    def is_authenticated(self) -> bool:
        return self.authz is not None and self.authz.authenticated

    @property
    def display_name(self) -> str:
        a = self.authz
        if a is None:
            return ""
        return a.username or a.email or ("" if a.account_id is None else str(a.account_id))

    @property
    def identity(self) -> str:
        """The Gerrit account id as a string ("" when unknown): stable, unlike usernames and emails."""
        a = self.authz
        return "" if a is None or a.account_id is None else str(a.account_id)

    def __repr__(self) -> str:
        return f"AuthzUser({self.authz!r})"


def credentials_for(identity: AuthzIdentity | None) -> AuthCredentials:
    """``request.auth``: the ``authenticated`` scope exactly when an account is known, for ``requires()``."""
    return AuthCredentials(["authenticated"] if identity is not None and identity.authenticated else [])
