"""A real, throw-away ``redis-server`` for tests of the shared (Redis) cache backend.

`RedisServer.start()` runs the Debian ``redis-server`` binary on a free loopback port in a temporary directory,
with persistence off (``--save '' --appendonly no``), and waits until it answers ``PING``. ``stop()`` terminates it
and removes the directory; ``kill()`` (SIGKILL) and ``pause()``/``resume()`` (SIGSTOP/SIGCONT) simulate an outage
and a hung server.

Environment:
  REDIS_SERVER   the binary to run (default: ``redis-server`` on PATH, else /usr/bin/redis-server)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from _support.proc import free_port, stop_process

__all__ = ["RedisError", "RedisServer", "redis_binary"]

START_TIMEOUT_S = 10.0


class RedisError(RuntimeError):
    """redis-server is missing or did not come up."""


def redis_binary() -> str | None:
    """The redis-server to run, or ``None`` when there is none on this machine."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def _ping(port: int, timeout: float = 0.5, tls: ssl.SSLContext | None = None) -> bool:
    """True when a Redis on ``port`` answers PING (raw RESP, no client library needed); over TLS with ``tls``.
    A server that wants a password first (``-NOAUTH``) is up too."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls is not None else raw
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process bound to 127.0.0.1 on a free port."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        requirepass: str | None = None,
        acl_user: tuple[str, str] | None = None,
    ) -> None:
        """``tls`` (certificate, key, CA) serves TLS only (``tls-port``, no plaintext port); ``requirepass`` sets
        the default user's password; ``acl_user`` (name, password) adds an ACL user and turns the default off."""
        self.binary = binary or redis_binary()
        self.tls = tls
        self.requirepass = requirepass
        self.acl_user = acl_user
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def log(self) -> str:
        if self._dir is None or not (self._dir / "redis.log").exists():
            return ""
        return (self._dir / "redis.log").read_text(errors="replace")

    def start(self, attempts: int = 3) -> RedisServer:
        if self.binary is None:
            raise RedisError("redis-server not found (install the Debian package or set REDIS_SERVER)")
        self._dir = Path(tempfile.mkdtemp(prefix="gerrit-authz-redis-"))
        for _ in range(attempts):  # the free port may be taken between probing and binding: retry on a new one
            self.port = free_port()
            if self._spawn():
                return self
        log = self.log
        self.stop()
        raise RedisError(f"redis-server did not answer PING after {attempts} attempts:\n{log[-2000:]}")

    def _spawn(self) -> bool:
        assert self._dir is not None and self.binary is not None
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",  # no RDB snapshots
            "appendonly": "no",
            "dir": str(self._dir),
            "daemonize": "no",
            "protected-mode": "yes",
        }
        tls_ctx = None
        if self.tls is not None:
            cert, key, ca = self.tls
            options.update(
                {
                    "port": "0",  # no plaintext listener at all
                    "tls-port": str(self.port),
                    "tls-cert-file": str(cert),
                    "tls-key-file": str(key),
                    "tls-ca-cert-file": str(ca),
                    "tls-auth-clients": "no",  # server-authenticated TLS; clients authenticate with AUTH
                }
            )
            tls_ctx = ssl.create_default_context(cafile=str(ca))
        if self.requirepass is not None:
            options["requirepass"] = self.requirepass
        argv = [self.binary, *(arg for name, value in options.items() for arg in (f"--{name}", value))]
        if self.acl_user is not None:
            name, password = self.acl_user
            # redis-server joins the words after --user up to the next --option into one config line.
            argv += ["--user", name, "on", f">{password}", "~*", "&*", "+@all", "--user", "default", "off"]
        with open(self._dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _ping(self.port, tls=tls_ctx):
                return True
            time.sleep(0.02)
        self._terminate()
        return False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the server is gone at once (connections reset, new ones refused)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server would never act on SIGTERM
        except ProcessLookupError:
            return
        stop_process(proc)

    def stop(self) -> None:
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
