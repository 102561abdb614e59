"""check-config warns (stderr, exit 0, naming the rule) about rules likely to disagree with another router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server._lint import lint_rules
from authz_server.cli import main
from authz_server.config import parse_config

GERRIT = {"url": "http://gerrit", "username": "u", "password_env": "P"}


def warnings_for(*rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(w.rule, w.code) for w in lint_rules(parse_config({"gerrit": GERRIT, "rules": list(rules)}).rules)]


def permission(project: str) -> dict[str, Any]:
    return {"permission": {"project": project, "ref": "refs/heads/{branch}", "perm": "read"}}


class TestSingleSegmentProject:
    def test_permission_project_from_a_one_segment_capture(self) -> None:
        rule = {
            "name": "read",
            "match": {"path": "/a/{project}/-/{branch}/{f:path}"},
            "require": permission("{project}"),
        }
        assert warnings_for(rule) == [("read", "single_segment_project")]

    def test_path_capture_is_fine(self) -> None:
        rule = {
            "name": "read",
            "match": {"path": "/a/{project:path}/-/{branch}/{f:path}"},
            "require": permission("{project}"),
        }
        assert warnings_for(rule) == []

    def test_inside_all_any_not_and_with_text_around_it(self) -> None:
        require = {"any": [{"not": {"group": "x"}}, {"all": [permission("team/{p}")]}]}
        rule = {"name": "nested", "match": {"path": "/x/{p}/-/{branch}"}, "require": require}
        assert warnings_for(rule) == [("nested", "single_segment_project")]

    def test_change_id_with_a_project_part(self) -> None:
        rule = {"name": "ch", "match": {"path": "/c/{project}/{n}"}, "require": {"change": {"id": "{project}~{n}"}}}
        assert warnings_for(rule) == [("ch", "single_segment_project")]

    def test_change_number_alone_is_fine(self) -> None:
        rule = {"name": "deploy", "match": {"path": "/deploy/{change}"}, "require": {"change": {"id": "{change}"}}}
        assert warnings_for(rule) == []

    def test_a_ref_from_a_one_segment_capture_is_not_a_project(self) -> None:
        rule = {"name": "r", "match": {"path": "/r/{p:path}/-/{branch}"}, "require": permission("{p}")}
        assert warnings_for(rule) == []


class TestCatchAll:
    @pytest.mark.parametrize("match", [{}, {"path_prefix": "/"}, {"methods": ["GET"]}])
    @pytest.mark.parametrize("require", ["anyone", "authenticated"])
    def test_an_allowing_catch_all_after_other_rules(self, match: dict[str, Any], require: str) -> None:
        first = {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"}
        assert warnings_for(first, {"name": "all", "match": match, "require": require}) == [("all", "catch_all_allow")]

    def test_a_narrower_prefix_or_a_requirement_is_fine(self) -> None:
        first = {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"}
        dashboard = {"name": "dash", "match": {"path_prefix": "/dashboard"}, "require": "authenticated"}
        admins = {"name": "rest", "match": {"path_prefix": "/"}, "require": {"group": "Administrators"}}
        assert warnings_for(first, dashboard, admins) == []


class TestCli:
    def test_warnings_go_to_stderr_with_exit_0(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        rules = [
            {"name": "read", "match": {"path": "/a/{project}/-/{branch}/{f:path}"}, "require": permission("{project}")},
            {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
        ]
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"gerrit": GERRIT, "rules": rules}))
        assert main(["check-config", str(config)]) == 0
        out, err = capsys.readouterr()
        assert "OK" in out and "warning:" not in out
        lines = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(lines) == 2
        assert "rule 'read'" in lines[0] and "{project:path}" in lines[0]
        assert "rule 'signed-in'" in lines[1]

    def test_the_example_has_no_warnings(self, example_config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check-config", str(example_config_path)]) == 0
        assert "warning:" not in capsys.readouterr().err
