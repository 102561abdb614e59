"""Strict account keys: which Gerrit account field an identity's claim names, and whether an account carries it.

An identity maps to a Gerrit account by exactly one field (``email``, ``username`` or ``account_id``). The value
is never handed to Gerrit's free-form account resolver, which reads ``self``/``me`` as the caller (the service
account), a bare number as an id, ``Name <email>`` and ``Name (id)`` forms, and whose URL a ``.``/``..`` would
change. So a value is first checked here (:func:`account_key`), the lookup asks Gerrit by that field only, and
the account Gerrit returns must carry the value itself (:func:`carries`); anything else is "no account".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from ._facts import Account

__all__ = ["ACCOUNT_FIELDS", "AccountField", "AccountKey", "account_key", "carries"]

AccountField = Literal["email", "username", "account_id"]
ACCOUNT_FIELDS: tuple[AccountField, ...] = get_args(AccountField)

_MAX_LENGTH = 254  # the longest valid email address (RFC 5321 path limit)
# Printable, no white space, nothing Gerrit's resolver or query parser gives a meaning: <>() "Name <email>",
# "Name (id)"; quotes and backslash (query syntax); '/' and '%' (the URL); ',' ';' ':' (lists, schemes).
_EMAIL = re.compile(r"[^\s<>()\"\\/%,;:@]+@[^\s<>()\"\\/%,;:@]+")
_USERNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._@+-]*[A-Za-z0-9])?")
_ACCOUNT_ID = re.compile(r"[1-9][0-9]{0,9}")
_SPECIAL = frozenset({"self", "me"})


@dataclass(frozen=True, slots=True)
class AccountKey:
    """An account field and the value an identity claims for it (already validated by :func:`account_key`)."""

    field: AccountField
    value: str


def account_key(field: AccountField, value: object) -> AccountKey | None:
    """The key to look up, or None when ``value`` could never name exactly one account by ``field``."""
    if not isinstance(value, str) or not value or len(value) > _MAX_LENGTH or not value.isascii():
        # Non-ASCII emails and usernames exist in principle, but Gerrit's index folds them in ways that cannot be
        # checked here; refusing them means "no account" (a 403), never a wrong one.
        return None
    if not value.isprintable() or value.lower() in _SPECIAL or value.strip(".") == "":
        return None
    if field == "email":
        ok = _EMAIL.fullmatch(value) is not None and not value.startswith(".") and ".." not in value
    elif field == "username":
        ok = _USERNAME.fullmatch(value) is not None and not value.isdigit()
    else:
        ok = _ACCOUNT_ID.fullmatch(value) is not None and int(value) <= 2**31 - 1
    return AccountKey(field, value) if ok else None


def carries(account: Account, key: AccountKey) -> bool:
    """Whether ``account`` really has ``key.value`` in ``key.field`` (Gerrit's queries also match prefixes and
    other cases, so what it returns is only a candidate)."""
    if key.field == "email":
        # Email lookups in Gerrit are case-insensitive; the preferred email is the one an account shows.
        return bool(account.email) and account.email.lower() == key.value.lower()
    if key.field == "username":
        return account.username == key.value
    return str(account.id) == key.value
