"""Strict account keys: which claim values may name an account, and whether an account carries them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_server._accounts import ACCOUNT_FIELDS, AccountField, AccountKey, account_key, carries
from authz_server._facts import Account

CAROL = Account(1000004, "carol", "carol@example.com", "Carol")

# Every form Gerrit's free-form account resolver gives a meaning other than "this exact field".
SPECIAL = [
    "self",
    "me",
    "Self",
    "ME",
    ".",
    "..",
    "...",
    "Carol <carol@example.com>",
    "Carol (1000004)",
    "(1000004)",
    "carol@example.com/..",
    "carol@example.com/../x",
    " carol@example.com",
    "carol@example.com ",
    "carol@\nexample.com",
    "carol\t@example.com",
    "carol@exa\x00mple.com",
    'carol"@example.com',
    "carol\\@example.com",
    "carol%40example.com",
    "carol@example.com,dave@example.com",
    "@example.com",
    "carol@",
    "carol@exämple.com",
    "",
    "x" * 255,
]


@pytest.mark.parametrize("field", ACCOUNT_FIELDS)
@pytest.mark.parametrize("value", SPECIAL)
def test_special_forms_never_make_a_key(field: AccountField, value: str) -> None:
    assert account_key(field, value) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "carol@example.com"),
        ("email", "carol+ci@example.co.uk"),
        ("username", "carol"),
        ("username", "ci-bot.2"),
        ("username", "carol@example.com"),  # Gerrit usernames may contain '@'
        ("account_id", "1000004"),
    ],
)
def test_plain_values_make_a_key(field: AccountField, value: str) -> None:
    assert account_key(field, value) == AccountKey(field, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "1000004"),  # a bare number is an id, never a username
        ("username", "-carol"),
        ("account_id", "carol"),
        ("account_id", "01000004"),
        ("account_id", "+1000004"),
        ("account_id", "99999999999"),
        ("email", "carol"),
        ("email", "1000004"),
        ("email", "carol@@example.com"),
    ],
)
def test_values_of_another_field_make_no_key(field: AccountField, value: str) -> None:
    assert account_key(field, value) is None


@pytest.mark.parametrize("value", [None, 1000004, 1.5, True, ["carol@example.com"], {"email": "x"}])
def test_non_string_claims_make_no_key(value: object) -> None:
    assert all(account_key(field, value) is None for field in ACCOUNT_FIELDS)


def test_carries_compares_the_one_field() -> None:
    assert carries(CAROL, AccountKey("email", "carol@example.com"))
    assert carries(CAROL, AccountKey("email", "Carol@Example.COM"))  # emails: case-insensitive, as in Gerrit
    assert not carries(CAROL, AccountKey("email", "carol@example"))
    assert carries(CAROL, AccountKey("username", "carol"))
    assert not carries(CAROL, AccountKey("username", "Carol"))
    assert carries(CAROL, AccountKey("account_id", "1000004"))
    assert not carries(CAROL, AccountKey("account_id", "1000005"))
    assert not carries(Account(7, "x", ""), AccountKey("email", "x@example.com"))


@given(field=st.sampled_from(ACCOUNT_FIELDS), value=st.text(max_size=40))
def test_a_key_is_only_ever_carried_by_an_account_with_that_value(field: AccountField, value: str) -> None:
    # Whatever the claim says, the only account it can name is one whose field equals it.
    key = account_key(field, value)
    if key is None:
        return
    for account in (CAROL, Account(1000001, "authz-bot", ""), Account(1000000, "admin", "admin@example.com")):
        if carries(account, key):
            actual = {"email": account.email.lower(), "username": account.username, "account_id": str(account.id)}
            assert actual[field] == (value.lower() if field == "email" else value)
