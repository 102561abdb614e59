"""The ``mtls`` identity source: template matching of Envoy's ``source.principal`` and the strict account key."""

from __future__ import annotations

import pytest
from _support.factories import FakeFacts, make_authorizer, make_input

from authz_server._accounts import AccountKey
from authz_server._deadline import Deadline
from authz_server._facts import Account
from authz_server._identity import MtlsSource
from authz_server._identity._mtls import match_principal
from authz_server.config import MtlsConfig, parse_config
from authz_server.errors import ConfigError

TEMPLATE = "spiffe://corp.example/ci/{account}"


@pytest.mark.parametrize(
    ("principal", "capture"),
    [
        ("spiffe://corp.example/ci/ci-bot", "ci-bot"),
        ("spiffe://corp.example/ci/", None),
        ("spiffe://corp.example/ci/a/b", None),
        ("spiffe://corp.example/cd/ci-bot", None),
        ("spiffe://evil.example/ci/ci-bot", None),
        ("xspiffe://corp.example/ci/ci-bot", None),
        ("", None),
    ],
)
def test_match_principal(principal: str, capture: str | None) -> None:
    assert match_principal(TEMPLATE, principal) == capture


def test_without_match_the_whole_principal_is_the_value() -> None:
    assert match_principal(None, "ci-bot") == "ci-bot"
    assert match_principal("spiffe://x/{account}/sa", "spiffe://x/bot/sa") == "bot"


async def test_source_maps_the_capture_strictly() -> None:
    source = MtlsSource(MtlsConfig(match=TEMPLATE))
    inp = make_input("GET", "/", source_principal="spiffe://corp.example/ci/ci-bot")
    assert source.present(inp)
    principal = await source.authenticate(inp, Deadline.after(1))
    assert principal.account_key == AccountKey("username", "ci-bot")
    assert principal.subject == "spiffe://corp.example/ci/ci-bot" and not principal.claims
    for value in ("self", "1000001"):  # never Gerrit's free-form resolver
        odd = make_input("GET", "/", source_principal=f"spiffe://corp.example/ci/{value}")
        assert (await source.authenticate(odd, Deadline.after(1))).account_key is None
    assert not source.present(make_input("GET", "/", source_principal="spiffe://corp.example/other/ci-bot"))
    assert not source.present(make_input("GET", "/"))


@pytest.mark.parametrize("match", ["spiffe://x/ci", "spiffe://x/{account}/{account}", "spiffe://x/{user}/{account}"])
def test_bad_template_is_a_config_error_naming_the_key(match: str) -> None:
    data = {
        "gerrit": {"url": "http://g", "username": "bot", "password_env": "X"},
        "identity": [{"mtls": {"match": match}}],
        "rules": [{"name": "r", "require": "anyone"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "identity[0].mtls" in str(info.value)


async def test_unmatched_principal_is_anonymous_and_matched_one_is_the_account() -> None:
    bot = Account(1000042, "ci-bot", "", "CI")
    facts = FakeFacts(accounts={"ci-bot": bot})
    authorizer = make_authorizer(
        [{"name": "r", "require": "authenticated"}], facts, [MtlsSource(MtlsConfig(match=TEMPLATE))]
    )
    ok = await authorizer.decide(make_input(source_principal="spiffe://corp.example/ci/ci-bot"), Deadline.after(5))
    assert ok.allowed and ok.identity.account == bot
    no = await authorizer.decide(make_input(source_principal="spiffe://corp.example/x/ci-bot"), Deadline.after(5))
    assert not no.allowed and no.identity.principal is None
