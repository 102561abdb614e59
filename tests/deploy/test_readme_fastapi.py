"""The README's FastAPI instructions run as written: the server they name comes with the extra they name, on a
port the quickstart does not hold, and the app answers through the middleware."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _support.proc import free_port

from fastapi_client.testing import FakeAuthorizer

REPO = Path(__file__).resolve().parents[2]
SECTION = REPO.joinpath("README.md").read_text().split("## FastAPI without Envoy", 1)[1].split("\n## ", 1)[0]


def fenced_sh(text: str) -> list[str]:
    return [line for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines()]


def command(prefix: str) -> str:
    lines = [code for line in fenced_sh(SECTION) if prefix in (code := line.split("  #", 1)[0].strip())]
    assert len(lines) == 1, f"the README's FastAPI section has no single {prefix!r} line: {lines}"
    return lines[0]


def quickstart_ports() -> set[int]:
    tree = ast.parse(REPO.joinpath("scripts/demo.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PORTS" for t in node.targets):
            ports = ast.literal_eval(node.value)
            assert isinstance(ports, dict)
            return set(ports.values())
    raise AssertionError("scripts/demo.py has no PORTS")


def test_the_extra_named_installs_the_server_named() -> None:
    install = shlex.split(command("pip install"))
    extra = re.fullmatch(r"\.\[(\w+)\]", install[-1])
    assert extra, install
    run = shlex.split(command("uvicorn "))
    server = next(word for word in run if "=" not in word)
    extras = tomllib.loads(REPO.joinpath("pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ;]", req, maxsplit=1)[0].lower() for req in extras[extra.group(1)]}
    assert server in names, f"README runs {server}, which pip install '.[{extra.group(1)}]' does not install"


def test_the_port_named_is_not_one_the_quickstart_holds() -> None:
    run = shlex.split(command("uvicorn "))
    port = int(run[run.index("--port") + 1])
    assert port not in quickstart_ports()


@pytest.fixture
def fake() -> Iterator[FakeAuthorizer]:
    with FakeAuthorizer() as authorizer:
        yield authorizer


def test_the_command_serves_the_example_app_through_the_middleware(fake: FakeAuthorizer) -> None:
    env_word, *argv = shlex.split(command("uvicorn "))
    name, _, _ = env_word.partition("=")
    assert name == "GERRIT_AUTHZ_TARGET"
    port = free_port()  # as written but for the port, which another test may hold
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = str(Path(sys.executable).parent / argv[0])
    env = {**os.environ, name: fake.target}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        fake.allow(account_id=1000002, username="bob", rule="signed-in")
        until = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/dashboard/me", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > until or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        assert resp.json()["username"] == "bob"
        assert fake.requests, "the middleware asked the service"
    finally:
        proc.terminate()
        proc.wait(10)
