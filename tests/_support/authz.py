"""Run gerrit-authz in-process for tests: configs derived from the contract's example, servers on ephemeral ports."""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from authz_server._app import build_components
from authz_server._server import AuthzServer, build_server
from authz_server.checkrequest import build_check_request, join_headers
from authz_server.config import Config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "config.yaml"


def example_config_data() -> dict[str, Any]:
    """The repository's example configuration (examples/config.yaml), as loaded YAML."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def make_config(
    gerrit_url: str,
    password_file: Path,
    *,
    identity: list[Any] | None = None,
    cache: Mapping[str, Any] | None = None,
    rules: list[Any] | None = None,
    server: Mapping[str, Any] | None = None,
    gerrit: Mapping[str, Any] | None = None,
) -> Config:
    """The example config pointed at a test Gerrit, listening on ephemeral loopback ports.

    The service account's password is read from ``password_file`` (the contract's ``*_file`` secret form)."""
    data = copy.deepcopy(example_config_data())
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **(server or {})})
    data["gerrit"].pop("password_env", None)
    data["gerrit"].update(
        {"url": gerrit_url, "username": "authz-bot", "password_file": str(password_file), **(gerrit or {})}
    )
    if identity is not None:
        data["identity"] = identity
    if cache is not None:
        data["cache"] = {**data["cache"], **cache}
    if rules is not None:
        data["rules"] = rules
    return parse_config(data)


@asynccontextmanager
async def authz_on_double(tmp_path: Path, rules: list[Any] | None = None) -> AsyncIterator[str]:
    """The example's config (or ``rules``) with Basic credentials as the identity, its Gerrit the in-process
    :class:`GerritDouble`; yields the gRPC address."""
    # Imported here: scripts/demo.py imports this module with only tests/ on its path (bench/ is not there).
    from bench.gerrit_double import SERVICE_PASSWORD, GerritDouble

    secret = tmp_path / "gerrit-password"
    secret.write_text(SERVICE_PASSWORD)
    config = make_config("http://gerrit.invalid", secret, identity=[{"gerrit_http_credentials": {}}], rules=rules)
    server = build_server(config, build_components(config, transport=GerritDouble().transport()))
    await server.start()
    try:
        yield server.address
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[AuthzServer]:
    app = build_server(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=1.0)


@asynccontextmanager
async def check_stub(address: str) -> AsyncIterator[external_auth_pb2_grpc.AuthorizationStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def double_user(i: int) -> dict[str, str]:
    """The ``authorization`` header of the Gerrit double's user ``i`` (bench/gerrit_double.py)."""
    from bench.gerrit_double import user_name, user_password

    return {"authorization": basic(user_name(i), user_password(i))}


def check_request(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    host: str = "svc.local",
    context_extensions: Mapping[str, str] | None = None,
) -> CheckRequest:
    """A CheckRequest shaped like the one Envoy sends (pseudo-headers included)."""
    return build_check_request(
        method,
        path,
        host=host,
        headers=join_headers((headers or {}).items()),
        request_id="1",
        source_address="127.0.0.1",
        source_port=40000,
        context_extensions=context_extensions,
    )
