"""The quickstart's main job: a real Gerrit with a demo organisation, gerrit-authz, Envoy and the example app,
then a tour of curl calls. Run it through ``scripts/quickstart.sh`` (which installs everything first).

Ports are the ones of ``examples/config.yaml`` and ``examples/envoy/envoy.yaml``, so the printed commands
can be copied: gerrit-authz 9001 (admin 9002, metrics 9003), the OIDC provider 9400, Envoy 10000 (admin 9901) in
front of an echo upstream on 8000, and the example FastAPI app (with the middleware) on 8001. Gerrit gets a free
port. Everything the demo writes goes to ``.quickstart/`` (emptied at the start of each run, kept afterwards):
the served ``config.yaml``, the logs, ``credentials.env`` (0600: the demo users' HTTP passwords, a token, the
service account's password) and ``ACCESS.txt`` (how to reach every piece, also printed). The tour never prints a
credential, only the variables that hold them. Every process is stopped on exit, and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Gerrit and OIDC harnesses the tests use

import httpx  # noqa: E402
import uvicorn  # noqa: E402
import yaml  # noqa: E402
from _support.authz import example_config_data  # noqa: E402
from _support.gerrit import GerritServer  # noqa: E402
from _support.gerrit_events import provision_events  # noqa: E402
from _support.gerrit_provision import DemoOrg, GerritFixture, provision  # noqa: E402
from _support.oidc import OidcProviderMock  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from authz_server._workers import die_with_parent  # noqa: E402

PORTS = {
    "gerrit-authz": 9001,
    "gerrit-authz admin": 9002,
    "gerrit-authz metrics": 9003,
    "OIDC provider": 9400,
    "Envoy": 10000,
    "Envoy admin": 9901,
    "echo upstream": 8000,
    "example app": 8001,
}
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(text, flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_for(url: str, timeout: float = 60.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


async def echo(request: Request) -> JSONResponse:
    """The demo upstream: shows the identity headers that reached it (and nothing secret)."""
    seen = {k: v for k, v in request.headers.items() if k.startswith(("x-gerrit-", "x-authz-"))}
    return JSONResponse({"path": request.url.path, "identity_headers": seen})


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.gerrit = GerritServer()
        self.env = dict(os.environ)
        self.failures: list[str] = []

    def spawn(self, name: str, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's lifetime
        # A session of its own: Ctrl-C reaches the demo only, which then stops every process in order; and
        # should the demo itself be killed, the kernel sends the process SIGTERM (PR_SET_PDEATHSIG).
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.procs.append((name, proc))
        return proc

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                say(f"demo: {name} did not stop in time, killing it")
                proc.kill()
        self.gerrit.close()

    # ------------------------------------------------------------------------------------------------ start-up

    def start(self) -> DemoOrg:
        taken = [f"{name} ({port})" for name, port in PORTS.items() if not port_free(port)]
        if taken:
            raise SystemExit(f"demo: these ports are in use: {', '.join(taken)}")
        say("demo: starting Gerrit ...")
        self.gerrit.start()
        org = provision(self.gerrit.url, self.gerrit.admin_auth)
        say(f"demo: Gerrit {self.gerrit.url} with users alice, bob, carol, dave; groups release-managers, build-devs;")
        say(
            "      projects platform/build and platform/secret; change "
            f"{org.change_merged.number} merged+reviewed, change {org.change_open.number} open"
        )

        users = {"BOB": org.bob, "CAROL": org.carol, "ALICE": org.alice, "DAVE": org.dave}
        self.env.update({f"{k}_PASSWORD": u.http_password for k, u in users.items()})
        self.env["GERRIT_AUTHZ_PASSWORD"] = org.bot.http_password

        oidc = OidcProviderMock(
            users=[{"sub": "alice", "email": org.alice.email, "name": "Alice"}], port=PORTS["OIDC provider"]
        ).start()
        self.procs.append(("oidc", oidc._proc))  # type: ignore[list-item]
        self.env["ALICE_TOKEN"] = oidc.tokens(client_id="gerrit-authz-demo", sub="alice")["id_token"]
        secrets = {k: self.env[k] for k in (*(f"{u}_PASSWORD" for u in users), "ALICE_TOKEN", "GERRIT_AUTHZ_PASSWORD")}
        secrets["GERRIT_ADMIN_PASSWORD"] = self.gerrit.admin_auth[1]
        self.secrets_file.touch(mode=0o600)
        self.secrets_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in secrets.items()))

        config = example_config_data()  # the contract's example, only pointed at this Gerrit
        config["gerrit"]["url"] = self.gerrit.url.rstrip("/")
        config["server"]["metrics_listen"] = f"127.0.0.1:{PORTS['gerrit-authz metrics']}"
        # Events on: decisions follow Gerrit within a second or two (README "Freshness from Gerrit's event stream").
        events = provision_events(GerritFixture(self.gerrit, org), self.workdir / "events")
        config["gerrit"]["events"] = events.config()
        say(f"demo: gerrit-authz follows stream-events on {events.ssh_url}")
        (self.workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.spawn("gerrit-authz", str(BIN / "gerrit-authz"), "serve", "--config", str(self.workdir / "config.yaml"))

        upstream = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "HEAD"])]),
                host="127.0.0.1",
                port=PORTS["echo upstream"],
                log_level="warning",
            )
        )
        threading.Thread(target=upstream.run, daemon=True).start()

        self.spawn(
            "envoy",
            str(BIN / "envoy"),
            "--config-path",
            "examples/envoy/envoy.yaml",
            "--log-level",
            "warn",
            "--use-dynamic-base-id",
        )
        app_env = {**self.env, "GERRIT_AUTHZ_TARGET": f"127.0.0.1:{PORTS['gerrit-authz']}"}
        self.spawn(
            "example-app",
            str(BIN / "uvicorn"),
            "examples.fastapi_app.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(PORTS["example app"]),
            env=app_env,
        )
        wait_for(f"http://127.0.0.1:{PORTS['Envoy admin']}/ready")
        wait_for(f"http://127.0.0.1:{PORTS['Envoy']}/healthz")
        wait_for(f"http://127.0.0.1:{PORTS['example app']}/healthz")
        wait_for(self.metrics_url)
        say(f"demo: everything is up; logs and config in {self.workdir}; credentials in {self.secrets_file}\n")
        return org

    @property
    def secrets_file(self) -> Path:
        return self.workdir / "credentials.env"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{PORTS['gerrit-authz metrics']}/metrics"

    def access(self, org: DemoOrg) -> str:
        """How to reach every piece (no secret in it: they stay in credentials.env)."""
        rel = os.path.relpath(self.workdir, Path.cwd())
        where = rel if not rel.startswith("..") else str(self.workdir)
        envoy = f"http://127.0.0.1:{PORTS['Envoy']}"
        return f"""\
gerrit-authz quickstart: how to reach every piece (written to {where}/ACCESS.txt)

  config served          {where}/config.yaml   (logs: {where}/*.log)
  credentials            {where}/credentials.env (mode 0600): load them with
                           set -a; . {where}/credentials.env; set +a
                         BOB_PASSWORD CAROL_PASSWORD ALICE_PASSWORD DAVE_PASSWORD (HTTP passwords of bob,
                         carol, alice, dave), ALICE_TOKEN (alice's OIDC ID token), GERRIT_AUTHZ_PASSWORD (the
                         service account authz-bot, for explain), GERRIT_ADMIN_PASSWORD (Gerrit's admin)
  Gerrit                 {self.gerrit.url} (UI and REST; user admin)
  Envoy                  {envoy} (admin http://127.0.0.1:{PORTS["Envoy admin"]})
  example FastAPI app    http://127.0.0.1:{PORTS["example app"]} (OpenAPI UI: /docs)
  gerrit-authz           ext_authz gRPC 127.0.0.1:{PORTS["gerrit-authz"]}
  Admin (Explain)        127.0.0.1:{PORTS["gerrit-authz admin"]}
  metrics                {self.metrics_url}
  OIDC provider          http://127.0.0.1:{PORTS["OIDC provider"]}

Try (after loading the credentials):
  curl -si -u "bob:$BOB_PASSWORD" {envoy}/artifacts/platform%2Fbuild/-/main/out/app.tar
  curl -si -H "authorization: Bearer $ALICE_TOKEN" {envoy}/dashboard
  curl -s {self.metrics_url} | grep '^gerrit_authz_decisions_total'
  .venv/bin/gerrit-authz explain --config {where}/config.yaml --path /artifacts/platform%2Fsecret/-/main/x \\
      --header "authorization: Basic $(printf carol:%s "$CAROL_PASSWORD" | base64)"
  grpcurl -plaintext 127.0.0.1:{PORTS["gerrit-authz admin"]} list gerrit_authz.v1.Admin
Merged change: {org.change_merged.number}; open change: {org.change_open.number} (POST {envoy}/deploy/N).
"""

    # ------------------------------------------------------------------------------------------------ the tour

    def run(self, title: str, command: str, expect_status: int | None = None, expect: str = "") -> str:
        say(f"## {title}\n$ {command}")
        result = subprocess.run(["bash", "-c", command], env=self.env, capture_output=True, text=True, timeout=60)
        out = result.stdout.strip()
        say("\n".join("  " + line for line in out.splitlines()[:30]) + "\n")
        status = next((int(line.split()[1]) for line in out.splitlines() if line.startswith("HTTP/")), None)
        if (
            (expect_status is not None and status != expect_status)
            or expect not in out
            or (expect_status is None and result.returncode != 0)
        ):
            self.failures.append(f"{title}: expected {expect_status or 'success'} {expect!r}, got {status}")
        return out

    def tour(self, org: DemoOrg) -> None:
        envoy = f"http://127.0.0.1:{PORTS['Envoy']}"
        artifact = "/artifacts/platform/build/-/main/out/app.tar"  # {project:path}: the project platform/build
        self.run("No credential needed for /healthz", f"curl -si {envoy}/healthz", 200)
        self.run(
            "bob reads an artifact: Gerrit's check.access says yes; the upstream sees who he is",
            f'curl -si -u "bob:$BOB_PASSWORD" {envoy}{artifact}',
            200,
            '"x-gerrit-username":"bob"',
        )
        self.run(
            "A spoofed identity header never reaches the upstream",
            f'curl -si -u "bob:$BOB_PASSWORD" -H "x-gerrit-account-id: 1" {envoy}{artifact}',
            200,
            f'"x-gerrit-account-id":"{org.bob.account_id}"',
        )
        self.run(
            "... nor one spelled with underscores (WSGI would read it as HTTP_X_GERRIT_ACCOUNT_ID): Envoy refuses it",
            f'curl -si -u "bob:$BOB_PASSWORD" -H "x_gerrit_account_id: 1" {envoy}{artifact}',
            400,
        )
        self.run("Anonymous: 401 with a challenge", f"curl -si {envoy}/dashboard", 401, "www-authenticate")
        self.run(
            "carol may not read platform/secret: 403 naming the rule and the permission",
            f'curl -si -u "carol:$CAROL_PASSWORD" {envoy}/artifacts/platform/secret/-/main/out/app.tar',
            403,
            "requirement_failed",
        )
        self.run(
            "alice (OIDC token) deploys a merged, reviewed change: she is a release manager",
            f'curl -si -X POST -H "authorization: Bearer $ALICE_TOKEN" {envoy}/deploy/{org.change_merged.number}',
            200,
        )
        self.run(
            "... but not an open one",
            f'curl -si -X POST -u "alice:$ALICE_PASSWORD" {envoy}/deploy/{org.change_open.number}',
            403,
            "status is NEW",
        )
        app = f"http://127.0.0.1:{PORTS['example app']}"
        self.run(
            "The FastAPI app without Envoy: the middleware asks the same service",
            f'curl -si -u "bob:$BOB_PASSWORD" {app}/dashboard/me',
            200,
            '"username":"bob"',
        )
        self.run("... and refuses the same way", f"curl -si {app}/dashboard/me", 401)
        explain = json.dumps(
            {
                "method": "GET",
                "path": "/artifacts/platform/secret/-/main/out/app.tar",
                "headers": {"authorization": "Basic __CAROL__"},
            }
        )
        explain = shlex.quote(explain).replace("__CAROL__", '\'"$(printf carol:%s "$CAROL_PASSWORD" | base64)"\'')
        self.run(
            "Why was carol refused? Admin/Explain shows the trace",
            f"grpcurl -plaintext -d {explain} 127.0.0.1:{PORTS['gerrit-authz admin']} gerrit_authz.v1.Admin/Explain",
            None,
            "cannot see project platform/secret",
        )


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the tour, leave everything up until Ctrl-C (or SIGTERM); see ACCESS.txt for how to reach it",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / ".quickstart",
        help="where the config, logs, credentials.env and ACCESS.txt go (default: .quickstart; emptied first)",
    )
    args = parser.parse_args(argv)
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C always stops the demo, even when started in the background of a script (which ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    demo = Demo(workdir)
    demo.env["PATH"] = os.environ["PATH"]
    toured = False
    try:
        org = demo.start()
        access = demo.access(org)
        (workdir / "ACCESS.txt").write_text(access)
        demo.tour(org)
        if demo.failures:
            say("demo: the tour did not go as expected:\n  " + "\n  ".join(demo.failures))
            return 1
        say("demo: tour complete: allow, 401, 403 and an Explain trace, through Envoy and through FastAPI.\n")
        say(access)
        toured = True
        if args.keep_running:
            say("demo: still running; press Ctrl-C to stop")
            while True:
                time.sleep(3600)
        return 0
    except (KeyboardInterrupt, _Stop):
        say("\ndemo: stopping")
        return 0 if toured else 130  # stopped while running after the tour is the normal end
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        demo.close()
        say(f"demo: stopped every process; {workdir} is kept (ACCESS.txt, config.yaml, logs)")


if __name__ == "__main__":
    sys.exit(main())
