"""check-config names every unknown key where it is, inside a requirement too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server.cli import main
from authz_server.config import parse_config
from authz_server.errors import ConfigError

BASE: dict[str, Any] = {"gerrit": {"url": "http://127.0.0.1:1", "username": "bot", "password_env": "X"}}
PERMISSION = {"project": "p", "ref": "refs/heads/main", "perm": "read"}


def errors_for(require: Any, **extra: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **extra, "rules": [{"name": "r", "require": require}]})
    return info.value.errors


def test_extra_key_next_to_permission_is_named() -> None:
    assert errors_for({"permission": PERMISSION, "colour": "blue"}) == [("rules[0].require.colour", "unknown key")]


def test_every_unknown_key_in_nested_requirements_is_named() -> None:
    require = {
        "all": [
            {"group": "admins", "typo": 1},
            "authenticated",
            {"any": [{"permission": {**PERMISSION, "prem": "x"}}, {"change": {"id": "1", "lables": {}}}]},
        ]
    }
    assert errors_for(require) == [
        ("rules[0].require.all[0].typo", "unknown key"),
        ("rules[0].require.all[2].any[0].permission.prem", "unknown key"),
        ("rules[0].require.all[2].any[1].change.lables", "unknown key"),
    ]


def test_two_known_kinds_in_one_mapping_say_how_to_combine_them() -> None:
    ((loc, reason),) = errors_for({"group": "a", "capability": "b"})
    assert loc == "rules[0].require"
    assert "group, capability" in reason and "all:" in reason


def test_unknown_and_missing_keys_of_one_spec_are_all_reported() -> None:
    assert errors_for({"permission": {"project": "p", "perms": "read", "refs": "x"}}) == [
        ("rules[0].require.permission.perms", "unknown key"),
        ("rules[0].require.permission.refs", "unknown key"),
        ("rules[0].require.permission.perm", "is required"),
        ("rules[0].require.permission.ref", "is required"),
    ]


def test_unknown_keys_across_the_file_are_all_named_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        **BASE,
        "server": {"listen": "127.0.0.1:0", "lissen": "x"},
        "identity": [{"jwt": {"issuer": "https://i", "audiences": ["a"], "audience": "a"}}],
        "cache": {"ttl": {"group": "1m"}},
        "rules": [{"name": "r", "match": {"paths": "/x"}, "require": {"permission": PERMISSION, "why": "?"}}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    for key in (
        "server.lissen",
        "identity[0].jwt.audience",
        "cache.ttl.group",
        "rules[0].match.paths",
        "rules[0].require.why",
    ):
        assert f"  {key}: unknown key" in err, err
