"""A real Gerrit server for integration tests.

`GerritServer.start()` fetches the Gerrit runtime with `scripts/fetch_gerrit.sh` (cached across runs),
initialises a throw-away development site (auth.type=DEVELOPMENT_BECOME_ANY_ACCOUNT, whose `admin` has the
HTTP password `secret`), points it at a free port on 127.0.0.1, its sshd at another (`ssh_port`, host keys in
`known_hosts()`), with e-mail off, and runs the daemon
until `stop()`.

Environment:
  GERRIT_VERSION        Gerrit release (default 3.10.2; 3.12 and later need Java 21+)
  GERRIT_JAVA_HOME      JDK to run Gerrit with (else JAVA_HOME, else `java` on PATH)
  GERRIT_AUTHZ_CACHE    where the runtime is cached (default ~/.cache/gerrit-authz)
  GERRIT_AUTHZ_KEEP_SITE=1  keep the temporary site (logs, git data) after `close()`
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _support.proc import free_port, stop_process
from authz_server._workers import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_gerrit.sh"
DEFAULT_VERSION = "3.10.2"
START_TIMEOUT_S = 120.0

# What gerrit.sh would pass: flogger through log4j (Gerrit's own log format) and JVM metrics access.
BASE_JAVA_OPTIONS = (
    "-Dflogger.backend_factory=com.google.common.flogger.backend.log4j.Log4jBackendFactory#getInstance",
    "-Dflogger.logging_context=com.google.gerrit.server.logging.LoggingContext#getInstance",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
)


def _on_linux_main_thread() -> bool:
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


class GerritError(RuntimeError):
    """Gerrit could not be fetched, initialised or started."""


def find_java() -> str:
    for var in ("GERRIT_JAVA_HOME", "JAVA_HOME"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "java").is_file():
            return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise GerritError("no Java found: set GERRIT_JAVA_HOME or JAVA_HOME, or put java on PATH")
    return java


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class GerritServer:
    """One Gerrit daemon on a private site and port. Not thread-safe; one per test session is plenty."""

    admin_auth: tuple[str, str] = ("admin", "secret")

    def __init__(
        self,
        version: str | None = None,
        java: str | None = None,
        workdir: Path | None = None,
        heap: str = "512m",
    ) -> None:
        self.version = version or os.environ.get("GERRIT_VERSION", DEFAULT_VERSION)
        self.java = java or find_java()
        self.heap = heap
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gerrit-authz-"))
        self.site = self.workdir / "site"
        self.log_path = self.site / "logs" / "daemon.log"
        self.port = 0
        self.ssh_port = 0
        self._launch_args: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. http://127.0.0.1:41234/"""
        if not self.port:
            raise GerritError("Gerrit has not been started")
        return f"http://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> GerritServer:
        """Fetch (if not cached), init a new site on a free port, start the daemon and wait until ready."""
        if self.running:
            raise GerritError("Gerrit is already running")
        self._launch_args = self._fetch()
        if not (self.site / "etc" / "gerrit.config").exists():
            self._init_site()
        for attempt in range(3):
            self.port = free_port()
            self.ssh_port = free_port()
            self._configure()
            try:
                self._launch()
                return self
            except GerritError as err:  # another process took the port between free_port() and Jetty's bind
                if attempt == 2 or "Address already in use" not in str(err):
                    raise
        return self

    def start_again(self) -> GerritServer:
        """Start the same site on the same port after `stop()` (to simulate an outage and recovery)."""
        if not self.port or not self._launch_args:
            raise GerritError("start_again() needs an earlier start()")
        if self.running:
            raise GerritError("Gerrit is already running")
        self._launch()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the daemon, wait, then SIGKILL if it does not exit. The site is kept."""
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def close(self) -> None:
        """Stop and remove the temporary site (unless GERRIT_AUTHZ_KEEP_SITE=1)."""
        self.stop()
        if self._own_workdir and os.environ.get("GERRIT_AUTHZ_KEEP_SITE") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def known_hosts(self) -> str:
        """``known_hosts`` lines for this site's sshd (what ``ssh-keyscan -p PORT 127.0.0.1`` would print)."""
        if not self.ssh_port:
            raise GerritError("Gerrit has not been started")
        lines = []
        for pub in sorted((self.site / "etc").glob("ssh_host_*_key.pub")):
            kind, key = pub.read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{self.ssh_port} {kind} {key}\n")
        if not lines:
            raise GerritError(f"no SSH host keys in {self.site / 'etc'}")
        return "".join(lines)

    def __enter__(self) -> GerritServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps --------------------------------------------------------------------------------------

    def _fetch(self) -> list[str]:
        env = {**os.environ, "GERRIT_VERSION": self.version}
        done = subprocess.run(["bash", str(FETCH_SCRIPT)], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise GerritError(f"fetch_gerrit.sh failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        runtime = Path(done.stdout.strip().splitlines()[-1])
        return (runtime / "launch.args").read_text().splitlines()

    def _java_command(self, *gerrit_args: str) -> list[str]:
        return [self.java, *BASE_JAVA_OPTIONS, *self._launch_args, *gerrit_args]

    def _init_site(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        init_log = self.workdir / "init.log"
        cmd = self._java_command("init", "--batch", "--dev", "--no-auto-start", "-d", str(self.site))
        with init_log.open("wb") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, check=False)
        if done.returncode != 0:
            hint = ""
            if "UnsupportedClassVersionError" in init_log.read_text(errors="replace"):
                hint = f"\nGerrit {self.version} needs a newer Java than {self.java}: set GERRIT_JAVA_HOME"
            raise GerritError(f"gerrit init failed ({done.returncode}); {init_log}:\n{_tail(init_log)}{hint}")

    def _configure(self) -> None:
        settings = {
            "httpd.listenUrl": self.url,
            "gerrit.canonicalWebUrl": self.url,
            "sshd.listenAddress": f"127.0.0.1:{self.ssh_port}",
            "sendemail.enable": "false",
            "container.heapLimit": self.heap,
            # No background work that could make timings flaky.
            "plugins.checkFrequency": "0",
            "index.onlineUpgrade": "false",
        }
        config = self.site / "etc" / "gerrit.config"
        for key, value in settings.items():
            subprocess.run(["git", "config", "-f", str(config), key, value], check=True)

    def _config_values(self, key: str) -> list[str]:
        config = self.site / "etc" / "gerrit.config"
        done = subprocess.run(
            ["git", "config", "-f", str(config), "--get-all", key], capture_output=True, text=True, check=False
        )
        return done.stdout.splitlines()

    def _launch(self) -> None:
        java_options = [*self._config_values("container.javaOptions"), f"-Xmx{self.heap}"]
        cmd = [
            self.java,
            *BASE_JAVA_OPTIONS,
            *(opt for opt in java_options if opt not in BASE_JAVA_OPTIONS),
            *self._launch_args,
            *("daemon", "-d", str(self.site), "--console-log"),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.site,
                # The death signal follows the *thread* that forked: only tie it to the main thread.
                preexec_fn=die_with_parent if _on_linux_main_thread() else None,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        probe = f"{self.url}config/server/version"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    self._proc = None
                    raise GerritError(f"Gerrit exited ({code}) while starting; {self.log_path}:\n{self._log()}")
                try:
                    if client.get(probe).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        self.stop()
        raise GerritError(f"Gerrit not ready after {START_TIMEOUT_S:.0f}s; {self.log_path}:\n{self._log()}")

    def _log(self) -> str:
        return _tail(self.log_path)
