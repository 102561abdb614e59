"""Captures that decode to something an upstream could read two ways are refused, not guessed at."""

from __future__ import annotations

import pytest
from _support.authz import check_request

from authz_server._input import parse_check_request
from authz_server._policy import Policy, Rule
from authz_server.config import parse_config
from authz_server.errors import BadRequest, status_for

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


ISSUE_RULES = Policy.from_config(
    parse_config(
        {
            "gerrit": {"url": "http://gerrit", "username": "u", "password_env": "P"},
            "rules": [
                {"name": "src", "match": {"methods": ["GET"], "path": "/src/{project}/+/{branch}/{file:path}"},
                 "require": "authenticated"},
                {"name": "ops", "match": {"methods": ["POST"], "path": "/ops/restart"}, "require": "authenticated"},
                {"name": "admin", "match": {"path_prefix": "/admin/"}, "require": "authenticated"},
                {"name": "deploy", "match": {"methods": ["POST"], "path": "/deploy/{change}"},
                 "require": "authenticated"},
                {"name": "catch-all", "match": {"path_prefix": "/"}, "require": "anyone"},
            ],
        }
    ).rules
)  # fmt: skip


def rule_for(method: str, path: str) -> str | None:
    found = ISSUE_RULES.match(parse_check_request(check_request(method, path)))
    return None if found is None else found.rule.name


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/src/secret/%2B/main/k", "src"),  # %2B is the literal '+'
        ("GET", "/src/secret/%2b/main/k", "src"),
        ("GET", "/%73rc/secret/+/main/k", "src"),
        ("HEAD", "/src/secret/+/main/k", "src"),  # a GET rule governs HEAD
        ("POST", "/ops/restar%74", "ops"),
        ("GET", "/admin/a%2Fb", "admin"),  # the slash view is in the same rule
        ("GET", "/src/platform%2Fbuild/+/main/k", "src"),  # inside a capture of the chosen rule
        ("POST", "/deploy/12%2F3", "deploy"),
        ("GET", "/plain%2Fname", "catch-all"),  # one segment or two: the catch-all either way
        ("GET", "/a/%252F", "catch-all"),  # %252F is '%2F' as text, decoded once
    ],
)
def test_the_rule_does_not_depend_on_the_spelling(method: str, path: str, rule: str) -> None:
    assert rule_for(method, path) == rule


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/ops%2Frestart"), ("GET", "/admin%2Fx"), ("POST", "/deploy%2F12"), ("GET", "/src%2Fsecret/+/m/k"),
     ("POST", "/ops%2frestart")],
)  # fmt: skip
def test_an_encoded_slash_that_would_change_the_rule_is_ambiguous_path(method: str, path: str) -> None:
    with pytest.raises(BadRequest) as err:
        rule_for(method, path)
    assert err.value.code == "ambiguous_path"
    assert status_for(err.value).http == 400


def test_head_follows_get_rules_only() -> None:
    assert rule_for("HEAD", "/src/p/+/main/f") == "src"
    assert rule_for("HEAD", "/ops/restart") == "catch-all"  # a POST-only rule does not govern HEAD
    assert Rule.from_config(
        parse_config(
            {
                "gerrit": {"url": "http://gerrit", "username": "u", "password_env": "P"},
                "rules": [{"name": "g", "match": {"methods": ["get"]}, "require": "anyone"}],
            }
        ).rules[0]
    ).methods == frozenset({"GET", "HEAD"})


def test_a_prefix_is_compared_decoded() -> None:
    rules = parse_config(
        {
            "gerrit": {"url": "http://gerrit", "username": "u", "password_env": "P"},
            "rules": [{"name": "plus", "match": {"path_prefix": "/c/%2B/"}, "require": "anyone"}],
        }
    ).rules
    inp = parse_check_request(check_request("GET", "/c/+/x"))
    found = Policy.from_config(rules).match(inp)
    assert found is not None and found.rule.name == "plus"


@pytest.mark.parametrize(
    ("match", "key"),
    [
        ({"path_prefix": "/a%2Fb/"}, "rules[0].match"),
        ({"path_prefix": "/%FF/"}, "rules[0].match"),
        ({"path": "/ops%2Frestart"}, "rules[0].match"),
        ({"path": "/{a:path}/{b:path}"}, "rules[0].match"),
    ],
)
def test_templates_and_prefixes_that_cannot_match_one_way_are_config_errors(match: dict[str, str], key: str) -> None:
    from authz_server.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "gerrit": {"url": "http://g", "username": "u", "password_env": "P"},
                "rules": [{"name": "r", "match": match, "require": "anyone"}],
            }
        )
    assert err.value.errors[0][0] == key


def _policy(*rules: dict[str, object]) -> Policy:
    config = {"gerrit": {"url": "http://gerrit", "username": "u", "password_env": "P"}, "rules": list(rules)}
    return Policy.from_config(parse_config(config).rules)


@pytest.mark.parametrize(
    ("strong", "weak", "path"),
    [
        ({"path_prefix": "/admin/"}, {"path": "/{rest:path}"}, "/admin%2Fusers"),
        ({"path_prefix": "/admin/"}, {"path": "/{rest:path}"}, "/admin%2fusers"),
        ({"path": "/a/b/{y}"}, {"path": "/a/{x}"}, "/a/b%2Fsecret"),
        ({"path": "/admin/{y:path}"}, {"path": "/{x}"}, "/admin%2Fusers"),
    ],
)
def test_a_capture_that_took_an_encoded_slash_cannot_hide_a_stricter_rule(
    strong: dict[str, str], weak: dict[str, str], path: str
) -> None:
    # Starlette decodes %2F before routing and serves the stricter route; taking the slash into the weaker rule's
    # capture would authorize the request under the wrong rule.
    policy = _policy(
        {"name": "strong", "match": strong, "require": "authenticated"},
        {"name": "weak", "match": weak, "require": "anyone"},
    )
    with pytest.raises(BadRequest) as err:
        policy.match(parse_check_request(check_request("GET", path)))
    assert err.value.code == "ambiguous_path"


def test_an_encoded_slash_stays_in_its_capture_when_only_a_later_rule_reads_it_otherwise() -> None:
    # The example's case: a single-segment project capture, and a catch-all below it that the slash reading hits.
    policy = _policy(
        {"name": "one", "match": {"path": "/p/{project}/-/x"}, "require": "anyone"},
        {"name": "below", "match": {"path_prefix": "/"}, "require": "authenticated"},
    )
    found = policy.match(parse_check_request(check_request("GET", "/p/platform%2Fbuild/-/x")))
    assert found is not None and found.rule.name == "one" and found.captures == {"project": "platform/build"}
