"""The README's first command does its job: the demo comes up, the tour goes as expected, ``--keep-running``
leaves something to explore (ACCESS.txt and credentials.env, metrics on), and Ctrl-C stops every process."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

REPO = Path(__file__).resolve().parents[2]
HEALTHZ = ("--path", "/healthz")
DEMO_PORTS = (9001, 9002, 9003, 9400, 10000, 9901, 8000, 8001)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_until(lines: queue.Queue[str], marker: str, timeout: float) -> str:
    """The demo's output up to the line holding ``marker`` (read by a thread: no pipe buffer stalls the demo)."""
    out = ""
    until = time.monotonic() + timeout
    while marker not in out:
        try:
            line = lines.get(timeout=max(0.1, until - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {marker!r} from the demo within {timeout:.0f}s:\n{out[-4000:]}")
        if line == _EOF:
            pytest.fail(f"the demo ended before {marker!r}:\n{out[-4000:]}")
        out += line
    return out


def _drain(lines: queue.Queue[str]) -> str:
    out = ""
    while not lines.empty():
        line = lines.get_nowait()
        out += "" if line == _EOF else line
    return out


_EOF = "\0demo output ended\n"


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(_EOF)  # read_until fails at once when the demo exits, instead of waiting out its timeout


def test_quickstart_tours_keeps_running_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    if any(listening(p) for p in DEMO_PORTS):
        pytest.fail(f"a demo port is already in use on this machine: {[p for p in DEMO_PORTS if listening(p)]}")
    workdir = tmp_path / "quickstart"
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--keep-running", "--workdir", str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        out = read_until(lines, "press Ctrl-C to stop", 600)
        assert "tour complete" in out
        for status in ("HTTP/1.1 200", "HTTP/1.1 401", "HTTP/1.1 403"):
            assert status in out
        assert '"requirements"' in out  # the Explain trace
        # No credential in what the demo prints: passwords only as $VARIABLES, tokens never.
        assert "_PASSWORD=" not in out and "eyJ0eXAi" not in out and "eyJhbGci" not in out

        # ACCESS.txt says (and the output printed) how to reach every piece.
        access = (workdir / "ACCESS.txt").read_text()
        assert access in out
        for piece in ("config.yaml", "credentials.env", "127.0.0.1:9001", "127.0.0.1:9002", "9003/metrics"):
            assert piece in access, piece
        for name in ("BOB_PASSWORD", "ALICE_TOKEN", "GERRIT_AUTHZ_PASSWORD"):
            assert name in access
        secrets = workdir / "credentials.env"
        assert secrets.stat().st_mode & 0o077 == 0
        values = dict(word.split("=", 1) for word in shlex.split(secrets.read_text()))  # as `.` in sh reads it
        assert {"BOB_PASSWORD", "CAROL_PASSWORD", "ALICE_TOKEN", "GERRIT_AUTHZ_PASSWORD"} <= set(values)

        # Metrics are on, and counted the tour's decisions.
        metrics = httpx.get("http://127.0.0.1:9003/metrics", timeout=10).text
        assert re.search(r'^gerrit_authz_decisions_total\{.*allowed="true".*\} [1-9]', metrics, re.M), metrics[:2000]
        # The explain command of ACCESS.txt works with the service password from credentials.env.
        env = {**os.environ, "GERRIT_AUTHZ_PASSWORD": values["GERRIT_AUTHZ_PASSWORD"]}
        explained = subprocess.run(
            [sys.executable, "-m", "authz_server", "explain", "--config", str(workdir / "config.yaml"), *HEALTHZ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert explained.returncode == 0, explained.stdout + explained.stderr

        below = descendants(proc.pid)
        assert below, "the demo runs its pieces as child processes"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(120) == 0
        reader.join(10)
        rest = _drain(lines)
        assert "stopped every process" in rest
        leftover = [pid for pid in below if alive(pid)]
        assert not leftover, f"processes left running after Ctrl-C: {leftover}"
        assert not any(listening(p) for p in DEMO_PORTS), "the demo left a process listening"
        assert (workdir / "ACCESS.txt").is_file()  # kept after the demo stopped
    finally:
        if proc.poll() is None:  # a failed assertion: still stop the demo cleanly, so nothing is left behind
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
