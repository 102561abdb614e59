"""``gerrit-authz serve`` in a subprocess for the fuzz tests (synchronous hypothesis tests call it over gRPC).

A separate process also makes a crash visible: it must still be serving after the run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _support.authz import example_config_data
from _support.proc import free_port, stop_process


@pytest.fixture(scope="module")
def authz_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The example config's rules, Basic identity, and a Gerrit on a closed port: lookups fail fast (503)."""
    tmp = Path(tmp_path_factory.mktemp("fuzz"))
    (tmp / "password").write_text("unused")
    data = example_config_data()
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"})
    data["gerrit"].pop("password_env", None)
    data["gerrit"].update({"url": f"http://127.0.0.1:{free_port()}", "password_file": str(tmp / "password")})
    data["identity"] = [{"gerrit_http_credentials": {}}]
    (tmp / "config.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz_server", "serve", "--config", str(tmp / "config.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # audit lines; the answers are what the tests judge
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "ext_authz gRPC listening on 127.0.0.1:" in line, line
        yield proc, line.rsplit(" ", 1)[1].strip()
    finally:
        stop_process(proc)
