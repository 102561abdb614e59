"""What every real component the tests start needs: a free loopback port, and a process stopped for sure."""

from __future__ import annotations

import signal
import socket
import subprocess

__all__ = ["free_port", "stop_process"]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (callers retry if another process takes it before they bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. A process that already exited is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
