"""The shipped examples as a pair: whenever a handler of the example app runs, the rule that allowed it is the
rule written for that route -- behind the middleware and behind the real Envoy running the example bootstrap.

``examples/config.yaml`` (the policy, unchanged but for loopback ports and a Gerrit double),
``examples/fastapi_app/app.py`` (the app, each route wrapped so that a run of its endpoint is recorded with the
``x-authz-rule`` it received) and ``examples/envoy/envoy.yaml`` (the proxy, real Envoy) are driven with every
route of the app x path shapes (a project with and without ``/``, ``%2F``, ``%2f``, a trailing slash, case,
dot-segments, a ``.json`` suffix) x methods x callers. The Gerrit facts come from ``bench/gerrit_double.py``
(an ``httpx.MockTransport``): reads are allowed, pushes only to ``sandbox/*``, ``alice`` is in every group,
``user00001`` in none that matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support.asgi import uvicorn_on_loop
from _support.authz import authz_on_double, double_user
from _support.envoy import EnvoyProcess, example_bootstrap, point_cluster
from _support.example_routes import RULE_FOR, UNCHECKED
from fastapi import FastAPI
from starlette.routing import Route

from examples.fastapi_app.app import create_app

pytestmark = [pytest.mark.envoy]

METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"]


CALLERS: dict[str, dict[str, str]] = {"anonymous": {}, "user00001": double_user(1), "alice": double_user(0)}


def artifact_paths() -> list[str]:
    paths = []
    for project in ("sandbox", "sandbox/tools", "infra/deploy-tools", "platform/build"):
        for slash in ("/", "%2F", "%2f"):
            p = project.replace("/", slash)
            paths += [
                f"/artifacts/{p}/-/main/out/app.tar",
                f"/artifacts/{p}/-/main/out/",
                f"/artifacts/{p}/-/main/f.json",
            ]
        paths += [
            f"/Artifacts/{project}/-/main/out/app.tar",
            f"/ARTIFACTS/{project}/-/main/x",
            f"/artifacts/{project}/-/main/x/",
            f"/artifacts/{project}/-/./main/x",
            f"/artifacts/x/../{project}/-/main/x",  # (httpx resolves literal dot-segments; the encoded ones stay)
            f"/artifacts/x/%2e%2e/{project}/-/main/x",
            f"/artifacts/{project}/-/main/%2e%2e/main/x",
            f"/dashboard/%2e%2e/artifacts/{project}/-/main/x",
            f"/artifacts//{project}/-/main/x",
        ]
    return paths


OTHER_PATHS = [
    "/healthz",
    "/healthz/",
    "/HEALTHZ",
    "/%68ealthz",
    "/deploy/12",
    "/deploy%2F12",
    "/deploy%2f12",
    "/deploy/12/",
    "/Deploy/12",
    "/DEPLOY/12",
    "/deploy/./12",
    "/x/../deploy/12",
    "/x/%2e%2e/deploy/12",
    "/deploy/%2e/12",
    "/deploy/12.json",
    "/admin/caches",
    "/admin%2Fcaches",
    "/admin%2fcaches",
    "/ADMIN/caches",
    "/admin/caches/",
    "/admin/caches.json",
    "/admin/./caches",
    "/dashboard/../admin/caches",
    "/dashboard/%2e%2e/admin/caches",
    "/admin/%2E/caches",
    "/dashboard/me",
    "/dashboard%2Fme",
    "/Dashboard/me",
    "/dashboard/me/",
    "/dashboard/./me",
    "/admin/../dashboard/me",
    "/admin/%2e%2e/dashboard/me",
    "/dashboard/me%2F",
    "/dashboard/whoami",
    "/dashboard/whoami.json",
    "/dashboard",
    "/me",
    "/docs",
    "/openapi.json",
]


@dataclass
class Served:
    """Each run of an endpoint of the app: (method, route path, x-authz-rule as the handler received it)."""

    runs: list[tuple[str, str, str]] = field(default_factory=list)


def recording(app: FastAPI, served: Served) -> FastAPI:
    """Wrap every route's endpoint app (called only once the router chose that route) to record its runs."""
    for route in app.router.routes:
        if isinstance(route, Route):
            inner = route.app

            def wrap(
                inner: Callable[..., Awaitable[None]] = inner, path: str = route.path
            ) -> Callable[..., Awaitable[None]]:
                async def endpoint(scope: Any, receive: Any, send: Any) -> None:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                    served.runs.append((scope["method"], path, headers.get("x-authz-rule", "")))
                    await inner(scope, receive, send)

                return endpoint

            route.app = wrap()
    return app


async def drive(client: httpx.AsyncClient, base: str, served: Served) -> tuple[list[str], dict[str, int]]:
    """Every request once; returns the violations and counts of served/refused requests."""
    violations: list[str] = []
    counts = {"served": 0, "refused": 0}
    covered: set[tuple[str, str]] = set()
    for path in [*artifact_paths(), *OTHER_PATHS]:
        for method in METHODS:
            for caller, headers in CALLERS.items():
                served.runs.clear()
                url = httpx.URL(base).copy_with(raw_path=path.encode())
                response = await client.request(method, url, headers=headers)
                where = f"{caller} {method} {path} -> {response.status_code}"
                if not served.runs:
                    counts["refused"] += 1
                    continue
                counts["served"] += 1
                for run_method, route, rule in served.runs:
                    key = ("GET" if run_method == "HEAD" else run_method, route)
                    covered.add(key)
                    expected = RULE_FOR.get(key)
                    if rule == "" and route in UNCHECKED:
                        continue  # excluded from checks by the app itself
                    if expected is None:
                        violations.append(f"{where}: route {route} has no rule written for it (ran under {rule!r})")
                    elif rule != expected:
                        violations.append(f"{where}: {route} ran under rule {rule!r}, written for {expected!r}")
    missing = set(RULE_FOR) - covered
    if missing:
        violations.append(f"routes never served (the drive is too weak to mean anything): {sorted(missing)}")
    return violations, counts


def report(violations: list[str]) -> str:
    return f"{len(violations)} violations, e.g.:\n" + "\n".join(violations[:25])


async def test_behind_the_middleware(tmp_path: Path) -> None:
    served = Served()
    async with authz_on_double(tmp_path) as address:
        app = recording(create_app(address, timeout=5), served)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, timeout=15) as client:
            violations, counts = await drive(client, "http://svc.example", served)
    assert not violations, report(violations)
    assert counts["served"] >= 60 and counts["refused"] >= 1000, counts


async def test_behind_envoy(tmp_path: Path) -> None:
    served = Served()
    async with authz_on_double(tmp_path) as address:
        app = recording(create_app(protect=False), served)
        async with uvicorn_on_loop(app) as upstream:
            bootstrap = example_bootstrap()
            point_cluster(bootstrap, "gerrit_authz", address)
            point_cluster(bootstrap, "upstream", upstream)
            envoy = await asyncio.to_thread(EnvoyProcess(bootstrap, tmp_path / "envoy").start)
            try:
                # Redirects are followed (Envoy unescapes %2F with a 307): what the client then reaches counts.
                async with httpx.AsyncClient(timeout=15, follow_redirects=True) as client:
                    violations, counts = await drive(client, envoy.url(), served)
            finally:
                await asyncio.to_thread(envoy.stop)
    assert not violations, report(violations)
    assert counts["served"] >= 60 and counts["refused"] >= 1000, counts
