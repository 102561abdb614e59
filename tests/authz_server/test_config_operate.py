"""The configuration keys of "Operating it": server.mode, rules[].mode, server.config_watch_interval,
cache.credential_key_file."""

from __future__ import annotations

from typing import Any

import pytest
from _support.authz import example_config_data

from authz_server.config import parse_config
from authz_server.errors import ConfigError


def minimal(**overrides: Any) -> dict[str, Any]:
    return {
        "gerrit": {"url": "http://127.0.0.1:8080", "username": "bot", "password_env": "P"},
        "rules": [{"name": "r", "require": "anyone"}],
        **overrides,
    }


def error_paths(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [path for path, _ in info.value.errors]


def test_the_example_enforces_and_watches_its_file_by_default() -> None:
    config = parse_config(example_config_data())
    assert config.server.mode == "enforce" and config.server.config_watch_interval == 2.0
    assert all(rule.mode == "enforce" for rule in config.rules)
    assert config.cache.credential_key_file is None


def test_modes_and_intervals_are_accepted() -> None:
    rules = [{"name": "r", "mode": "shadow", "require": "anyone"}]
    config = parse_config(
        minimal(
            server={"mode": "shadow", "config_watch_interval": "500ms"},
            rules=rules,
            cache={"credential_key_file": "/k"},
        )
    )
    assert (config.server.mode, config.server.config_watch_interval, config.rules[0].mode) == ("shadow", 0.5, "shadow")
    assert str(config.cache.credential_key_file) == "/k"


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"server": {"mode": "audit"}}, "server.mode"),
        ({"server": {"config_watch_interval": "soon"}}, "server.config_watch_interval"),
        ({"rules": [{"name": "r", "mode": "dry-run", "require": "anyone"}]}, "rules[0].mode"),
    ],
)
def test_bad_values_name_their_key_path(overrides: dict[str, Any], path: str) -> None:
    assert error_paths(minimal(**overrides)) == [path]
