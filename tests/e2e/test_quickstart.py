"""The README's first command does its job: the demo comes up, the tour goes as expected, everything stops."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

REPO = Path(__file__).resolve().parents[2]
DEMO_PORTS = (9001, 9002, 9400, 10000, 9901, 8000, 8001)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_quickstart_demo_runs_its_tour_and_cleans_up() -> None:
    if any(listening(p) for p in DEMO_PORTS):
        pytest.fail(f"a demo port is already in use on this machine: {[p for p in DEMO_PORTS if listening(p)]}")
    result = subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "tour complete" in out
    for status in ("HTTP/1.1 200", "HTTP/1.1 401", "HTTP/1.1 403"):
        assert status in out
    assert '"requirements"' in out  # the Explain trace
    # No credential in what the tour prints: passwords only as $VARIABLES, tokens never.
    assert "_PASSWORD=" not in out and "eyJ0eXAi" not in out and "eyJhbGci" not in out
    assert not any(listening(p) for p in DEMO_PORTS), "the demo left a process listening"
