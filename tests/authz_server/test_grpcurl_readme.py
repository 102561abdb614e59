"""Every grpcurl command of the README's "Debugging with grpcurl" section, run against the real service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _support.authz import REPO_ROOT, make_config, running_server

from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit


def readme_grpcurl_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Debugging with grpcurl", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the grpcurl section has no sh block"
    commands = [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]
    assert len(commands) >= 6
    return commands


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(gerrit: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzServer]:
    secret = tmp_path_factory.mktemp("grpcurl") / "password"
    secret.write_text(gerrit.org.bot.http_password)
    async with running_server(
        make_config(gerrit.server.url, secret, identity=[{"gerrit_http_credentials": {}}])
    ) as app:
        yield app


async def run(command: str, app: AuthzServer, gerrit: Any) -> str:
    bob = gerrit.org.bob
    command = (
        command.replace("127.0.0.1:9001", app.address)
        .replace("127.0.0.1:9002", app.admin_address)
        .replace("bob:secret", f"{bob.username}:{bob.http_password}")
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, f"{command}\n{err.decode()}"
    return out.decode()


async def test_every_readme_grpcurl_command_works(authz: AuthzServer, gerrit: Any) -> None:
    outputs = {}
    for command in readme_grpcurl_commands():
        key = command.split()[-1] if "-d" in command else " ".join(command.split()[2:4])
        outputs[key] = await run(command, authz, gerrit)

    listed = outputs["127.0.0.1:9001 list"]
    assert "envoy.service.auth.v3.Authorization" in listed and "grpc.health.v1.Health" in listed
    assert "rpc Check" in outputs["127.0.0.1:9001 describe"]
    assert json.loads(outputs["grpc.health.v1.Health/Check"])["status"] == "SERVING"

    check = json.loads(outputs["envoy.service.auth.v3.Authorization/Check"])
    headers = {h["header"]["key"]: h["header"]["value"] for h in check["ok_response"]["headers"]}
    assert headers["x-authz-rule"] == "health"

    explain = json.loads(outputs["gerrit_authz.v1.Admin/Explain"])
    assert explain["allowed"] is True and explain["rule"] == "read-artifacts"
    assert explain["identity"]["username"] == "bob"
    (permission,) = [r for r in explain["requirements"] if r["kind"] == "permission"]
    assert (permission["target"], permission["result"]) == ("platform/build refs/heads/main read", "satisfied")
    assert permission["source"] in ("gerrit", "cache")

    # bob's cached credential check and check.access answer (grpcurl prints int64 as a string)
    assert int(json.loads(outputs["gerrit_authz.v1.Admin/Invalidate"])["removed"]) >= 2
