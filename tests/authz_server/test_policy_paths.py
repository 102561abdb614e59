"""Captures that decode to something an upstream could read two ways are refused, not guessed at."""

from __future__ import annotations

import pytest
from _support.authz import check_request

from authz_server._input import parse_check_request
from authz_server._policy import Policy
from authz_server.config import parse_config
from authz_server.errors import BadRequest

POLICY = Policy.from_config(
    parse_config(
        {
            "gerrit": {"url": "http://gerrit", "username": "u", "password_env": "P"},
            "rules": [{"name": "a", "match": {"path": "/p/{project}/-/{file:path}"}, "require": "anyone"}],
        }
    ).rules
)


def captures(path: str) -> dict[str, str] | None:
    match = POLICY.match(parse_check_request(check_request("GET", path)))
    return None if match is None else dict(match.captures)


def test_an_encoded_slash_stays_inside_the_project() -> None:
    assert captures("/p/platform%2Fbuild/-/out/app.tar") == {"project": "platform/build", "file": "out/app.tar"}


@pytest.mark.parametrize(
    "path", ["/p/a%2F..%2Fb/-/x", "/p/a%2F.%2Fb/-/x", "/p/a%2F%2Fb/-/x", "/p/%2Fb/-/x", "/p/a/-/x%2F..%2Fy"]
)
def test_captures_decoding_to_dot_or_empty_segments_are_400(path: str) -> None:
    with pytest.raises(BadRequest) as err:
        captures(path)
    assert err.value.code == "malformed_path"


def test_request_id_prefers_x_request_id_over_the_stream_id() -> None:
    request = check_request("GET", "/p/a/-/x", {"x-request-id": "0d9e4c8a-uuid"})
    request.attributes.request.http.id = "123456"
    assert parse_check_request(request).request_id == "0d9e4c8a-uuid"


@pytest.mark.parametrize("path", ["/admin;x/caches", "/public/..;/admin", "/p/a/-/x;jsessionid=1"])
def test_path_parameters_are_400(path: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_check_request(check_request("GET", path))
    assert "';'" in err.value.reason


@pytest.mark.parametrize("key", ["methods", "hosts", "context_extensions"])
def test_an_empty_match_list_is_a_config_error_not_match_anything(key: str) -> None:
    from authz_server.errors import ConfigError

    empty: list[str] | dict[str, str] = {} if key == "context_extensions" else []
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "gerrit": {"url": "http://g", "username": "u", "password_env": "P"},
                "rules": [{"name": "r", "match": {key: empty}, "require": "anyone"}],
            }
        )
    assert err.value.errors[0][0] == f"rules[0].match.{key}"


@pytest.mark.parametrize(("host", "matches"), [("[::1]:8080", True), ("[::1]", True), ("api.local:443", False)])
def test_hosts_match_with_or_without_port_ipv6_included(host: str, matches: bool) -> None:
    rules = parse_config(
        {
            "gerrit": {"url": "http://g", "username": "u", "password_env": "P"},
            "rules": [{"name": "r", "match": {"hosts": ["[::1]"]}, "require": "anyone"}],
        }
    ).rules
    inp = parse_check_request(check_request("GET", "/x", host=host))
    assert (Policy.from_config(rules).match(inp) is not None) is matches
