"""Transport-security configuration: the caller-trust rule, TLS keys, upstream trust and Redis credentials."""

from __future__ import annotations

import copy
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from _support.authz import example_config_data
from _support.tls import TestCA

from authz_server._app import build_components
from authz_server._caller_trust import is_loopback, plaintext_exposed
from authz_server._opstats import ReloadStats
from authz_server._redis_conn import RedisConnection, redis_cache_options
from authz_server._reload import LiveRuntime, Reloader, running_trust_errors
from authz_server._secrets import SecretFile
from authz_server._server import warn_if_exposed
from authz_server._trust import upstream_tls
from authz_server.cli import main
from authz_server.config import Config, parse_config
from authz_server.errors import ConfigError

MTLS = {"mtls": {"match": "spiffe://corp.example/ci/{account}"}}
METADATA = {"envoy_jwt_metadata": {}}


def config(*, server: dict[str, Any] | None = None, identity: list[Any] | None = None, **top: Any) -> dict[str, Any]:
    data = copy.deepcopy(example_config_data())
    data["server"].update(server or {})
    if identity is not None:
        data["identity"] = identity
    for section, values in top.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return err.value.errors


def tls(tmp_path: Path, *, mtls: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"cert_file": str(tmp_path / "tls.crt"), "key_file": str(tmp_path / "tls.key")}
    if mtls:
        block["client_ca_file"] = str(tmp_path / "ca.crt")
    return block


@pytest.mark.parametrize("source", [MTLS, METADATA], ids=["mtls", "envoy_jwt_metadata"])
def test_proxy_only_sources_need_authenticated_callers(source: dict[str, Any], tmp_path: Path) -> None:
    kind = next(iter(source))
    open_listener = {"listen": "0.0.0.0:9001"}
    found = errors(config(server=open_listener, identity=[{"gerrit_http_credentials": {}}, source]))
    assert [key for key, _ in found] == [f"identity[1].{kind}"]
    assert "0.0.0.0:9001" in found[0][1]
    # Server TLS alone authenticates the server, not the caller.
    found = errors(config(server={**open_listener, "tls": tls(tmp_path, mtls=False)}, identity=[source]))
    assert [key for key, _ in found] == [f"identity[0].{kind}"]
    for trusted in (
        {"listen": "127.0.0.1:9001"},
        {"listen": "[::1]:9001"},
        {"listen": "localhost:9001"},
        {**open_listener, "tls": tls(tmp_path, mtls=True)},
        {**open_listener, "caller_authentication": "mesh"},
    ):
        assert isinstance(parse_config(config(server=trusted, identity=[source])), Config)


def test_admin_off_loopback_needs_client_certificates(tmp_path: Path) -> None:
    exposed = {"admin_listen": "0.0.0.0:9002"}
    assert [k for k, _ in errors(config(server=exposed))] == ["server.admin_tls"]
    assert [k for k, _ in errors(config(server={**exposed, "admin_tls": tls(tmp_path, mtls=False)}))] == [
        "server.admin_tls"
    ]
    # A mesh authenticates Check callers, not operators: the Admin still needs its own client certificates.
    mesh = {**exposed, "caller_authentication": "mesh"}
    assert [k for k, _ in errors(config(server=mesh))] == ["server.admin_tls"]
    assert parse_config(config(server={**exposed, "admin_tls": tls(tmp_path, mtls=True)}))


def test_allowed_callers_need_a_client_ca(tmp_path: Path) -> None:
    block = {**tls(tmp_path, mtls=False), "allowed_callers": ["spiffe://corp.example/ns/edge/sa/envoy"]}
    assert [k for k, _ in errors(config(server={"tls": block}))] == ["server.tls"]
    assert [k for k, _ in errors(config(server={"tls": {**tls(tmp_path, mtls=True), "allowed_callers": []}}))] == [
        "server.tls.allowed_callers"
    ]


def test_plaintext_exposed_listener_is_flagged(tmp_path: Path) -> None:
    assert plaintext_exposed(parse_config(config(server={"listen": "0.0.0.0:9001"})))
    assert plaintext_exposed(parse_config(config(server={"listen": "authz.internal:9001"})))
    assert not plaintext_exposed(parse_config(config(server={"listen": "127.0.0.1:9001"})))
    assert not plaintext_exposed(
        parse_config(config(server={"listen": "0.0.0.0:9001", "tls": tls(tmp_path, mtls=False)}))
    )
    assert not plaintext_exposed(
        parse_config(config(server={"listen": "0.0.0.0:9001", "caller_authentication": "mesh"}))
    )
    assert [is_loopback(a) for a in ("127.0.0.2:1", "[::1]:1", "[::]:1", "10.0.0.1:1")] == [True, True, False, False]


def test_check_config_exits_2_naming_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(server={"listen": "0.0.0.0:9001"}, identity=[MTLS])))
    assert main(["check-config", str(path)]) == 2
    assert "identity[0].mtls" in capsys.readouterr().err
    assert main(["serve", "--config", str(path)]) == 2


def test_a_password_in_the_redis_url_is_refused_and_not_echoed() -> None:
    found = errors(config(cache={"backend": "redis", "redis_url": "redis://:s3cr3t-pw@127.0.0.1:6379/0"}))
    assert [k for k, _ in found] == ["cache"]
    assert "redis_password_file" in found[0][1] and "s3cr3t-pw" not in str(found)
    found = errors(config(cache={"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0", "redis_ca_file": "/x"}))
    assert "rediss://" in found[0][1]
    both = {
        "backend": "redis",
        "redis_url": "rediss://r:6380/0",
        "redis_password_file": "/x",
        "redis_password_env": "X",
    }
    assert errors(config(cache=both))


def test_a_redis_url_on_port_0_is_refused_not_read_as_6379() -> None:
    # urlsplit reads ":0" as port 0, which redis_cache_options' "or 6379" would turn into another server.
    found = errors(config(cache={"backend": "redis", "redis_url": "redis://127.0.0.1:0/0"}))
    assert "port" in found[0][1]


def test_redis_options_carry_tls_and_a_rotating_password(tmp_path: Path) -> None:
    password = tmp_path / "redis-password"
    password.write_text("first\n")
    conn = RedisConnection(tmp_path / "ca.pem", "gerrit-authz", SecretFile(password, "cache.redis_password_file"))
    options = redis_cache_options("rediss://redis.corp.example:6380/2", conn)
    assert (options["endpoint"], options["port"], options["db"], options["ssl"]) == (
        "redis.corp.example",
        6380,
        2,
        True,
    )
    pool = options["connection_pool_kwargs"]
    assert pool["ssl_ca_certs"] == str(tmp_path / "ca.pem") and pool["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    provider = pool["credential_provider"]
    assert provider.get_credentials() == ("gerrit-authz", "first")
    password.write_text("second\n")
    assert provider.get_credentials() == ("gerrit-authz", "second")
    assert redis_cache_options("redis://127.0.0.1/0")["connection_pool_kwargs"] == {}


def test_gerrit_trust_keys_are_coherent(tmp_path: Path) -> None:
    found = errors(config(gerrit={"url": "https://g", "verify_tls": False, "ca_file": str(tmp_path / "ca.pem")}))
    assert "verify_tls" in found[0][1]
    found = errors(config(gerrit={"client_cert_file": str(tmp_path / "c.pem")}))
    assert "client_key_file" in found[0][1]


def test_upstream_trust_is_a_context_of_its_own(tmp_path: Path) -> None:
    pki = TestCA(tmp_path)
    assert upstream_tls("gerrit") is True and upstream_tls("gerrit", verify=False) is False
    ctx = upstream_tls("gerrit", ca_file=pki.cert)
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("organizationName", "gerrit-authz tests"),), (("commonName", "test CA"),))
    ]
    client = pki.issue("to-gerrit")
    assert isinstance(
        upstream_tls("gerrit", ca_file=pki.cert, cert_file=client.cert, key_file=client.key), ssl.SSLContext
    )
    with pytest.raises(ConfigError) as err:
        upstream_tls("identity[0].jwt", ca_file=tmp_path / "missing.pem")
    assert err.value.errors[0][0] == "identity[0].jwt.ca_file"
    with pytest.raises(ConfigError) as err:
        upstream_tls("gerrit", cert_file=client.cert, key_file=pki.cert)
    assert err.value.errors[0][0] == "gerrit.client_cert_file"


async def test_a_reload_cannot_claim_a_listener_it_does_not_have(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running Check listener is 0.0.0.0 (plaintext): a new file saying 127.0.0.1 and adding ``mtls`` is
    refused, because the listener stays 0.0.0.0 until a restart."""
    running = parse_config(config(server={"listen": "0.0.0.0:9001"}))
    sneaky = config(server={"listen": "127.0.0.1:9001"}, identity=[MTLS])
    assert parse_config(sneaky)  # valid on its own
    assert [k for k, _ in running_trust_errors(running, parse_config(sneaky))] == ["identity[0].mtls"]
    assert not running_trust_errors(running, parse_config(config(server={"listen": "127.0.0.1:9001"})))

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(sneaky))
    monkeypatch.setenv(example_config_data()["gerrit"]["password_env"], "pw")
    runtime = LiveRuntime(build_components(running), retire_after=0)
    stats = ReloadStats()
    assert await Reloader(path, runtime, stats, interval=0).reload("test") is False
    assert stats.failures == 1 and runtime.components.config is running
    await runtime.aclose()


def test_a_plaintext_exposed_listener_is_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="gerrit_authz.server"):
        assert warn_if_exposed(parse_config(config(server={"listen": "0.0.0.0:9001"})))
        assert not warn_if_exposed(
            parse_config(config(server={"listen": "0.0.0.0:9001", "caller_authentication": "mesh"}))
        )
        assert not warn_if_exposed(parse_config(config()))
    (record,) = caplog.records
    assert "0.0.0.0:9001" in record.getMessage() and "plaintext" in record.getMessage()


@pytest.mark.parametrize("url", ["https://bot:s3cret@gerrit.example", "https://bot@gerrit.example"])
def test_a_gerrit_url_carrying_a_user_or_password_is_refused(url: str) -> None:
    """check-config prints gerrit.url: a password in it would land in CI logs."""
    found = errors(config(gerrit={"url": url}))
    assert found[0][0] == "gerrit" and "no user or password" in found[0][1]
    assert "s3cret" not in repr(found)
