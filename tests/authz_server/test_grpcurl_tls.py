"""The README's grpcurl recipes for TLS listeners, run with the real grpcurl against mTLS listeners."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
from _support.authz import REPO_ROOT, make_config, running_server
from _support.tls import CertFiles, TestCA

CALLER = "spiffe://corp.example/ns/edge/sa/envoy"
OPERATOR = "spiffe://corp.example/ops/alice"


def readme_tls_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Transport security", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the transport security section has no sh block"
    commands = [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]
    assert len(commands) >= 4
    return commands


async def grpcurl(command: str) -> tuple[int, str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return int(proc.returncode or 0), out.decode(), err.decode()


def substitute(command: str, pki: TestCA, client: CertFiles, operator: CertFiles, addresses: tuple[str, str]) -> str:
    return (
        command.replace("127.0.0.1:9001", addresses[0])
        .replace("127.0.0.1:9002", addresses[1])
        .replace("ca.crt", str(pki.cert))
        .replace("client.crt", str(client.cert))
        .replace("client.key", str(client.key))
        .replace("operator.crt", str(operator.cert))
        .replace("operator.key", str(operator.key))
    )


@pytest.mark.asyncio
async def test_readme_tls_recipes(tmp_path: Path) -> None:
    pki = TestCA(tmp_path)
    server = pki.issue("authz", server=True)
    client, operator = pki.issue("envoy", uri=CALLER), pki.issue("alice", uri=OPERATOR)
    secret = tmp_path / "password"
    secret.write_text("unused")

    def tls(caller: str) -> dict[str, object]:
        return {
            "cert_file": str(server.cert),
            "key_file": str(server.key),
            "client_ca_file": str(pki.cert),
            "allowed_callers": [caller],
        }

    config = make_config(
        "http://127.0.0.1:9", secret, identity=[], server={"tls": tls(CALLER), "admin_tls": tls(OPERATOR)}
    )
    async with running_server(config) as app:
        addresses = (app.address, app.admin_address)
        outputs = []
        for command in readme_tls_commands():
            code, out, err = await grpcurl(substitute(command, pki, client, operator, addresses))
            assert code == 0, f"{command}\n{err}"
            outputs.append(out)
        assert "envoy.service.auth.v3.Authorization" in outputs[0] and "grpc.health.v1.Health" in outputs[0]
        assert json.loads(outputs[1])["status"] == "SERVING"
        check = json.loads(outputs[2])
        assert {h["header"]["key"]: h["header"]["value"] for h in check["ok_response"]["headers"]}["x-authz-rule"] == (
            "health"
        )
        assert "gerrit_authz.v1.Admin" in outputs[3]

        # The health recipe with the operator's certificate on the Check port, without a certificate, or in
        # plaintext: refused, never an answer.
        health = readme_tls_commands()[1]
        code, _, err = await grpcurl(substitute(health, pki, operator, client, addresses))
        assert code != 0 and "PermissionDenied" in err, err
        without_cert = f'grpcurl -cacert {pki.cert} -d \'{{"service": ""}}\' {app.address} grpc.health.v1.Health/Check'
        code, out, err = await grpcurl(without_cert)
        assert code != 0 and "SERVING" not in out, err
        code, out, err = await grpcurl(f"grpcurl -plaintext {app.address} list")
        assert code != 0 and "Authorization" not in out, err
