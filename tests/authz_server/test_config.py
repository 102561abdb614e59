"""Configuration: the contract's example means what its comments say; every mistake names its key path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _support.factories import make_input

from authz_server._policy import Policy
from authz_server._requirements import All, Any_, Anyone, Authenticated, Capability, Change, Group, Permission
from authz_server.cli import main
from authz_server.config import Config, load_config, parse_config
from authz_server.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(example_config_path: Path) -> Config:
    return load_config(example_config_path)


@pytest.fixture
def example_data(example_config_path: Path) -> dict[str, Any]:
    data = yaml.safe_load(example_config_path.read_text())
    assert isinstance(data, dict)
    return data


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gerrit": {"url": "http://gerrit.test", "username": "bot", "password_env": "PW"},
        "rules": [{"name": "all", "require": "authenticated"}],
    }
    data.update(overrides)
    return data


class TestExample:
    def test_server(self, example: Config) -> None:
        assert example.server.listen == "127.0.0.1:9001"
        assert example.server.admin_listen == "127.0.0.1:9002"
        assert example.server.reflection is True
        assert example.server.check_timeout == 1.0

    def test_gerrit(self, example: Config) -> None:
        assert example.gerrit.url == "http://127.0.0.1:8080"
        assert example.gerrit.username == "authz-bot"
        assert example.gerrit.password_env == "GERRIT_AUTHZ_PASSWORD"
        assert example.gerrit.password_file is None
        assert example.gerrit.timeout == 2.0

    def test_password_comes_from_the_named_environment_variable(
        self, example: Config, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GERRIT_AUTHZ_PASSWORD", "from-env")
        assert example.gerrit.password() == "from-env"
        monkeypatch.delenv("GERRIT_AUTHZ_PASSWORD")
        with pytest.raises(ConfigError) as info:
            example.gerrit.password()
        assert info.value.errors[0][0] == "gerrit.password_env"

    def test_password_file_works_too(self, example_data: dict[str, Any], tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text("from-file\n")
        del example_data["gerrit"]["password_env"]
        example_data["gerrit"]["password_file"] = str(secret)
        assert parse_config(example_data).gerrit.password() == "from-file"

    def test_identity_sources_in_order(self, example: Config) -> None:
        assert [(e.jwt is not None, e.gerrit_http_credentials is not None) for e in example.identity] == [
            (True, False),
            (False, True),
        ]
        jwt = example.identity[0].jwt
        assert jwt is not None
        assert jwt.issuer == "http://127.0.0.1:9400"
        assert jwt.audiences == ["gerrit-authz-demo"]
        assert jwt.account_claim == "email"
        assert jwt.jwks_url is None  # OIDC discovery
        assert not any(alg.startswith("HS") or alg == "none" for alg in jwt.algorithms)

    def test_cache(self, example: Config) -> None:
        cache = example.cache
        assert cache.backend == "memory"
        assert cache.redis_url is None
        assert (cache.ttl.account, cache.ttl.groups, cache.ttl.access, cache.ttl.change, cache.ttl.negative) == (
            300.0,
            60.0,
            60.0,
            15.0,
            10.0,
        )
        assert cache.stale_if_error == 300.0

    def test_rules_in_order(self, example: Config) -> None:
        assert [r.name for r in example.rules] == [
            "health",
            "read-artifacts",
            "upload-artifacts",
            "admin-api",
            "deploy",
            "dashboard",
        ]

    def test_requirements(self, example: Config) -> None:
        rules = {r.name: r for r in example.rules}
        assert rules["health"].require == Anyone()
        assert rules["read-artifacts"].require == Permission("{project}", "refs/heads/{branch}", "read")
        assert rules["upload-artifacts"].require == Permission("{project}", "refs/heads/{branch}", "push")
        assert rules["admin-api"].require == Any_((Group("Administrators"), Capability("administrateServer")))
        assert rules["dashboard"].require == Authenticated()
        assert rules["dashboard"].match.methods == ["GET", "HEAD"]
        assert rules["dashboard"].match.path_prefix == "/dashboard"

    def test_deploy_requirement_tree(self, example: Config) -> None:
        deploy = next(r for r in example.rules if r.name == "deploy")
        assert deploy.match.methods == ["POST"]
        assert deploy.match.path == "/deploy/{change}"
        assert deploy.require == All(
            (
                Group("release-managers"),
                Change(id="{change}", status="MERGED", labels=(("Code-Review", 2), ("Verified", 1))),
            )
        )

    @pytest.mark.parametrize(
        ("method", "path", "rule", "captures"),
        [
            ("GET", "/healthz", "health", {}),
            (
                "GET",
                "/artifacts/platform%2Fbuild/-/main/out/app.tar",
                "read-artifacts",
                {"project": "platform/build", "branch": "main", "file": "out/app.tar"},
            ),
            (
                "GET",
                "/artifacts/platform/build/-/main/out/app.tar",
                "read-artifacts",
                {"project": "platform/build", "branch": "main", "file": "out/app.tar"},
            ),
            (
                "PUT",
                "/artifacts/infra/deploy-tools/-/main/x",
                "upload-artifacts",
                {"project": "infra/deploy-tools", "branch": "main", "file": "x"},
            ),
            ("HEAD", "/artifacts/p/-/main/a", "read-artifacts", {"project": "p", "branch": "main", "file": "a"}),
            ("PUT", "/artifacts/p/-/main/a", "upload-artifacts", {"project": "p", "branch": "main", "file": "a"}),
            ("POST", "/artifacts/p/-/main/a", "upload-artifacts", {"project": "p", "branch": "main", "file": "a"}),
            ("DELETE", "/artifacts/p/-/main/a", None, {}),
            ("GET", "/admin/caches", "admin-api", {}),
            ("GET", "/admin", None, {}),
            ("POST", "/deploy/12345", "deploy", {"change": "12345"}),
            ("GET", "/deploy/12345", None, {}),
            ("GET", "/dashboard", "dashboard", {}),
            ("HEAD", "/dashboard/me", "dashboard", {}),
            ("POST", "/dashboard/me", None, {}),
            ("GET", "/anything/else", None, {}),  # no catch-all: a request that no rule names is refused
        ],
    )
    def test_first_match_wins(
        self, example: Config, method: str, path: str, rule: str | None, captures: dict[str, str]
    ) -> None:
        match = Policy.from_config(example.rules).match(make_input(method, path))
        if rule is None:
            assert match is None
            return
        assert match is not None
        assert (match.rule.name, dict(match.captures)) == (rule, captures)

    def test_yaml_round_trip_is_the_same_config(self, example: Config, example_data: dict[str, Any]) -> None:
        assert parse_config(copy.deepcopy(example_data)) == example


class TestDurations:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0), (0.25, 0.25)],
    )
    def test_accepted(self, value: Any, seconds: float) -> None:
        config = parse_config(minimal(server={"check_timeout": value}))
        assert config.server.check_timeout == seconds

    @pytest.mark.parametrize("value", ["1 minute", "5", "1d", "-1s", "s", True, -2, None])
    def test_refused(self, value: Any) -> None:
        errors = errors_of(minimal(server={"check_timeout": value}))
        assert [path for path, _ in errors] == ["server.check_timeout"]


class TestErrors:
    @pytest.mark.parametrize(
        ("mutate", "key_path"),
        [
            (lambda d: d.update(bogus=1), "bogus"),
            (lambda d: d["server"].update(bogus=1), "server.bogus"),
            (lambda d: d["gerrit"].update(password="inline"), "gerrit.password"),
            (lambda d: d["cache"]["ttl"].update(bogus="1s"), "cache.ttl.bogus"),
            (lambda d: d["identity"][0]["jwt"].update(bogus=1), "identity[0].jwt.bogus"),
            (
                lambda d: d["identity"][1]["gerrit_http_credentials"].update(bogus=1),
                "identity[1].gerrit_http_credentials.bogus",
            ),
            (lambda d: d["rules"][2].update(bogus=1), "rules[2].bogus"),
            (lambda d: d["rules"][2]["match"].update(bogus=1), "rules[2].match.bogus"),
        ],
    )
    def test_unknown_keys_name_their_path(self, example_data: dict[str, Any], mutate: Any, key_path: str) -> None:
        mutate(example_data)
        assert errors_of(example_data) == [(key_path, "unknown key")]

    def test_unknown_key_deep_in_a_requirement_names_the_whole_path(self, example_data: dict[str, Any]) -> None:
        example_data["rules"][4]["require"]["all"][1]["change"]["bogus"] = 1
        ((path, reason),) = errors_of(example_data)
        line = f"{path}: {reason}"
        assert line.startswith("rules[4].require")
        assert "all[1].change.bogus" in line
        assert "unknown key" in line

    def test_every_error_is_reported(self, example_data: dict[str, Any]) -> None:
        example_data["server"]["bogus"] = 1
        example_data["cache"]["ttl"]["account"] = "soon"
        paths = {path for path, _ in errors_of(example_data)}
        assert paths == {"server.bogus", "cache.ttl.account"}

    def test_not_a_mapping(self) -> None:
        assert errors_of(["rules"])[0][0] == "(top level)"

    def test_rules_are_required(self) -> None:
        data = minimal()
        del data["rules"]
        assert [p for p, _ in errors_of(data)] == ["rules"]

    def test_bad_template(self) -> None:
        ((path, reason),) = errors_of(
            minimal(rules=[{"name": "r", "match": {"path": "/a/v{x}"}, "require": "authenticated"}])
        )
        assert path == "rules[0].match"
        assert "whole path segment" in reason

    def test_unknown_requirement_kind(self) -> None:
        ((path, reason),) = errors_of(minimal(rules=[{"name": "r", "require": {"grop": "x"}}]))
        assert path == "rules[0].require.grop"
        assert "unknown requirement" in reason

    def test_unknown_bare_requirement(self) -> None:
        ((path, reason),) = errors_of(minimal(rules=[{"name": "r", "require": "everyone"}]))
        assert path == "rules[0].require"
        assert "everyone" in reason

    def test_requirement_with_two_kinds(self) -> None:
        ((path, _),) = errors_of(minimal(rules=[{"name": "r", "require": {"group": "a", "capability": "b"}}]))
        assert path == "rules[0].require"

    @pytest.mark.parametrize(
        ("require", "fragment"),
        [
            ({"permission": {"project": "p", "ref": "refs/heads/x"}}, "permission.perm"),
            ({"change": {"id": "1", "status": "DRAFT"}}, "change.status"),
            ({"change": {"id": "1", "labels": {"Code-Review": "two"}}}, "change.labels.Code-Review"),
            ({"change": {"id": "1", "submittable": "yes"}}, "change.submittable"),
            ({"all": []}, "all"),
            ({"any": [{"group": ""}]}, "any[0].group"),
            ({"not": {"bogus": 1}}, "not.bogus"),
        ],
    )
    def test_bad_requirement_values_name_their_key(self, require: Any, fragment: str) -> None:
        ((path, reason),) = errors_of(minimal(rules=[{"name": "r", "require": require}]))
        # One key path, down into the requirement tree.
        assert path == f"rules[0].require.{fragment}".replace(".[", "[")
        assert reason and ":" not in reason.split(" ")[0]

    def test_placeholder_not_captured_by_the_path(self) -> None:
        rule = {
            "name": "r",
            "match": {"path": "/p/{project}"},
            "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
        }
        ((path, reason),) = errors_of(minimal(rules=[rule]))
        assert path == "rules[0]"
        assert "branch" in reason and "project" in reason

    def test_placeholder_without_a_path_template(self) -> None:
        rule = {"name": "r", "match": {"path_prefix": "/p/"}, "require": {"group": "{team}"}}
        ((path, reason),) = errors_of(minimal(rules=[rule]))
        assert path == "rules[0]"
        assert "team" in reason

    def test_duplicate_rule_names(self) -> None:
        rules = [{"name": "same", "require": "anyone"}, {"name": "other", "require": "anyone"}]
        rules.append({"name": "same", "require": "authenticated"})
        ((_, reason),) = errors_of(minimal(rules=rules))
        assert "unique" in reason and "same" in reason and "other" not in reason

    def test_both_path_and_path_prefix(self) -> None:
        rule = {"name": "r", "match": {"path": "/a", "path_prefix": "/a"}, "require": "anyone"}
        ((path, reason),) = errors_of(minimal(rules=[rule]))
        assert path == "rules[0].match"
        assert "path_prefix" in reason

    def test_path_prefix_must_start_with_slash(self) -> None:
        rule = {"name": "r", "match": {"path_prefix": "admin/"}, "require": "anyone"}
        assert [p for p, _ in errors_of(minimal(rules=[rule]))] == ["rules[0].match"]

    def test_redis_backend_without_url(self) -> None:
        ((path, reason),) = errors_of(minimal(cache={"backend": "redis"}))
        assert path == "cache"
        assert "redis_url" in reason

    def test_redis_backend_with_url(self) -> None:
        config = parse_config(minimal(cache={"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}))
        assert config.cache.backend == "redis"

    def test_unknown_cache_backend(self) -> None:
        assert [p for p, _ in errors_of(minimal(cache={"backend": "memcached"}))] == ["cache.backend"]

    def test_leeway_over_a_minute(self, example_data: dict[str, Any]) -> None:
        example_data["identity"][0]["jwt"]["leeway"] = "61s"
        assert [p for p, _ in errors_of(example_data)] == ["identity[0].jwt.leeway"]
        example_data["identity"][0]["jwt"]["leeway"] = "1m"
        assert parse_config(example_data).identity[0].jwt.leeway == 60.0  # type: ignore[union-attr]

    @pytest.mark.parametrize("alg", ["HS256", "HS512", "none"])
    def test_symmetric_and_none_algorithms_refused(self, example_data: dict[str, Any], alg: str) -> None:
        example_data["identity"][0]["jwt"]["algorithms"] = ["RS256", alg]
        assert [p for p, _ in errors_of(example_data)] == ["identity[0].jwt.algorithms[1]"]

    def test_identity_entry_needs_exactly_one_kind(self, example_data: dict[str, Any]) -> None:
        example_data["identity"][1]["jwt"] = {"issuer": "https://i", "audiences": ["a"]}
        assert [p for p, _ in errors_of(example_data)] == ["identity[1]"]

    def test_exactly_one_gerrit_secret(self) -> None:
        both = minimal()
        both["gerrit"]["password_file"] = "/run/secrets/pw"
        assert [p for p, _ in errors_of(both)] == ["gerrit"]
        neither = minimal()
        del neither["gerrit"]["password_env"]
        assert [p for p, _ in errors_of(neither)] == ["gerrit"]

    def test_bad_listen_address(self) -> None:
        assert [p for p, _ in errors_of(minimal(server={"listen": "9001"}))] == ["server.listen"]

    def test_load_config_reports_unreadable_and_invalid_yaml(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            load_config(tmp_path / "missing.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("rules: [\n")
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert "invalid YAML" in info.value.errors[0][1]


class TestCheckConfigCli:
    def test_example_is_valid(
        self, example_config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("GERRIT_AUTHZ_PASSWORD", raising=False)  # the secret is not the file's business
        assert main(["check-config", str(example_config_path)]) == 0
        assert "OK" in capsys.readouterr().out

    def test_bad_file_exits_2_with_key_paths(
        self, example_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        example_data["cache"]["ttl"]["bogus"] = "1s"
        example_data["identity"][0]["jwt"]["leeway"] = "5m"
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(example_data))
        assert main(["check-config", str(bad)]) == 2
        captured = capsys.readouterr()
        assert "cache.ttl.bogus: unknown key" in captured.err
        assert "identity[0].jwt.leeway:" in captured.err
        assert "OK" not in captured.out

    def test_missing_file_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check-config", str(tmp_path / "nope.yaml")]) == 2
        assert "nope.yaml" in capsys.readouterr().err

    def test_python_dash_m(self, example_config_path: Path, example_data: dict[str, Any], tmp_path: Path) -> None:
        ok = subprocess.run(
            [sys.executable, "-m", "authz_server", "check-config", str(example_config_path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        example_data["rules"][1]["match"]["bogus"] = True
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(example_data))
        failed = subprocess.run(
            [sys.executable, "-m", "authz_server", "check-config", str(bad)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert failed.returncode == 2
        assert "rules[1].match.bogus: unknown key" in failed.stderr


class TestMethods:
    """A misspelt method would make a rule that never matches, so the request falls to a later, laxer rule."""

    def test_an_unknown_method_is_an_error_naming_its_key_path(self, example_data: dict[str, Any]) -> None:
        example_data["rules"][2]["match"]["methods"] = ["PUT", "PSOT"]
        [(key, reason)] = errors_of(example_data)
        assert key == "rules[2].match.methods[1]"
        assert reason.startswith("unknown HTTP method 'PSOT' (expected one of ")

    @pytest.mark.parametrize("method", ["PSOT", "FOO", "G ET", "", "*"])
    def test_anything_outside_the_accepted_set_is_refused(self, example_data: dict[str, Any], method: str) -> None:
        example_data["rules"][0]["match"]["methods"] = [method]
        errors = errors_of(example_data)
        assert [key for key, _ in errors] == ["rules[0].match.methods[0]"]

    @pytest.mark.parametrize("method", ["GET", "patch", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "MKCOL", "UNLOCK"])
    def test_rfc_9110_patch_and_webdav_methods_are_accepted(self, example_data: dict[str, Any], method: str) -> None:
        example_data["rules"][0]["match"]["methods"] = [method]
        parse_config(example_data)

    def test_check_config_exits_2_naming_the_key(
        self, example_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        example_data["rules"][3]["match"]["methods"] = ["PSOT"]
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(example_data))
        assert main(["check-config", str(bad)]) == 2
        assert "rules[3].match.methods[0]: unknown HTTP method 'PSOT'" in capsys.readouterr().err


class TestCheckConfigSaysWhatItDidNotCheck:
    def test_an_unset_secret_unread_files_and_unreached_services_are_named(
        self,
        example_data: dict[str, Any],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.delenv("GERRIT_AUTHZ_PASSWORD", raising=False)
        example_data["cache"]["credential_key_file"] = str(tmp_path / "absent-key")
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(example_data))
        assert main(["check-config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "OK" in out
        assert "not checked" in out
        assert "gerrit.password_env: environment variable GERRIT_AUTHZ_PASSWORD is not set" in out
        assert f"cache.credential_key_file: {tmp_path / 'absent-key'} not read" in out
        assert f"Gerrit at {example_data['gerrit']['url']}" in out
        assert f"the OIDC issuer {example_data['identity'][0]['jwt']['issuer']}" in out

    def test_tls_and_redis_files_are_named_as_not_read(
        self, example_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # check-config reads none of these (serve does): saying nothing would read as "checked".
        example_data["server"]["tls"] = {"cert_file": str(tmp_path / "t.crt"), "key_file": str(tmp_path / "t.key")}
        example_data["gerrit"]["ca_file"] = str(tmp_path / "gerrit-ca.pem")
        example_data["cache"].update(
            backend="redis", redis_url="rediss://127.0.0.1:6380/0", redis_password_file=str(tmp_path / "pw")
        )
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(example_data))
        assert main(["check-config", str(path)]) == 0
        out = capsys.readouterr().out
        for key, name in [
            ("server.tls.cert_file", "t.crt"),
            ("server.tls.key_file", "t.key"),
            ("gerrit.ca_file", "gerrit-ca.pem"),
            ("cache.redis_password_file", "pw"),
        ]:
            assert f"{key}: {tmp_path / name} not read" in out

    def test_a_set_secret_is_not_claimed_to_work(
        self, example_config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GERRIT_AUTHZ_PASSWORD", "s3cret-value")
        assert main(["check-config", str(example_config_path)]) == 0
        out = capsys.readouterr().out
        assert "gerrit.password_env: set, but not tried against Gerrit" in out
        assert "s3cret-value" not in out
