"""The quickstart's main job: a real Gerrit with a demo organisation, gerrit-authz, Envoy and the example app,
then a tour of curl calls. Run it through ``scripts/quickstart.sh`` (which installs everything first).

Ports are the ones of ``examples/config.yaml`` and ``examples/envoy/envoy.yaml``, so the printed commands
can be copied: gerrit-authz 9001 (admin 9002), the OIDC provider 9400, Envoy 10000 (admin 9901) in front of an
echo upstream on 8000, and the example FastAPI app (with the middleware) on 8001. Gerrit gets a free port.
The demo users' HTTP passwords are written to a 0600 file and used through environment variables: the tour
never prints a credential. Every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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

PORTS = {
    "gerrit-authz": 9001,
    "gerrit-authz admin": 9002,
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
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)
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
        say("demo: starting Gerrit (first run fetches it from Maven Central) ...")
        self.gerrit.start()
        org = provision(self.gerrit.url, self.gerrit.admin_auth)
        say(f"demo: Gerrit {self.gerrit.url} with users alice, bob, carol, dave; groups release-managers, build-devs;")
        say(
            "      projects platform/build and platform/secret; change "
            f"{org.change_merged.number} merged+reviewed, change {org.change_open.number} open"
        )

        secrets_file = self.workdir / "credentials.env"
        secrets_file.touch(mode=0o600)
        users = {"BOB": org.bob, "CAROL": org.carol, "ALICE": org.alice}
        secrets_file.write_text("".join(f"{k}_PASSWORD={u.http_password}\n" for k, u in users.items()))
        self.env.update({f"{k}_PASSWORD": u.http_password for k, u in users.items()})
        self.env["GERRIT_AUTHZ_PASSWORD"] = org.bot.http_password

        oidc = OidcProviderMock(
            users=[{"sub": "alice", "email": org.alice.email, "name": "Alice"}], port=PORTS["OIDC provider"]
        ).start()
        self.procs.append(("oidc", oidc._proc))  # type: ignore[list-item]
        self.env["ALICE_TOKEN"] = oidc.tokens(client_id="gerrit-authz-demo", sub="alice")["id_token"]

        config = example_config_data()  # the contract's example, only pointed at this Gerrit
        config["gerrit"]["url"] = self.gerrit.url.rstrip("/")
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
        say(f"demo: everything is up; logs and config in {self.workdir}; credentials in {secrets_file}\n")
        return org

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    args = parser.parse_args(argv)
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    with tempfile.TemporaryDirectory(prefix="gerrit-authz-demo-") as tmp:
        demo = Demo(Path(tmp))
        demo.env["PATH"] = os.environ["PATH"]
        try:
            org = demo.start()
            demo.tour(org)
            if demo.failures:
                say("demo: the tour did not go as expected:\n  " + "\n  ".join(demo.failures))
                return 1
            say("demo: tour complete: allow, 401, 403 and an Explain trace, through Envoy and through FastAPI.")
            if args.keep_running:
                say("demo: still running; press Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return 0
        finally:
            demo.close()
            say("demo: stopped every process")


if __name__ == "__main__":
    sys.exit(main())
