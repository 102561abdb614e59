"""An example FastAPI app protected by gerrit-authz, without an Envoy in front of it.

Run gerrit-authz with the contract's example configuration, then::

    GERRIT_AUTHZ_TARGET=127.0.0.1:9001 uvicorn examples.fastapi_app.app:app --port 8081
    curl -u bob:HTTP-PASSWORD http://127.0.0.1:8081/artifacts/platform/build/-/main/out/app.tar

The routes and the example policy (``examples/config.yaml``) agree route for route; each route's comment names
the rule that governs it, and there is no catch-all: a request no rule names is refused (403), so a route added
here without its rule cannot be reached by accident. ``/healthz`` (rule ``health``, ``anyone``) and the API docs
are excluded from checks so that liveness probes do not depend on the authorization service.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from fastapi_client import AuthzIdentity, AuthzMiddleware, CurrentIdentity, OptionalIdentity, install_openapi_security

DEFAULT_TARGET = "127.0.0.1:9001"


def _identity_json(identity: AuthzIdentity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {
        "account_id": identity.account_id,
        "username": identity.username,
        "email": identity.email,
        "rule": identity.rule,
        "decision_id": identity.decision_id,
        "authenticated": identity.authenticated,
    }


def create_app(target: str | None = None, *, protect: bool = True, **middleware: Any) -> FastAPI:
    """The example app; ``protect=False`` gives the same app without the middleware (for comparisons).

    ``middleware`` overrides :class:`AuthzMiddleware` options (``timeout``, ``fail_open``, ...).
    """
    app = FastAPI(title="gerrit-authz FastAPI example")

    @app.get("/healthz")  # rule health (excluded from checks: probes must not depend on the service)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # `{project:path}`, as in the policy: Gerrit project names hold "/" (platform/build), and Starlette routes on
    # the percent-decoded path, so "platform%2Fbuild" arrives here as "platform/build" too.
    @app.get("/artifacts/{project:path}/-/{branch}/{file:path}")  # rule read-artifacts (GET, HEAD)
    async def read_artifact(project: str, branch: str, file: str, request: Request) -> dict[str, Any]:
        return {
            "project": project,
            "branch": branch,
            "file": file,
            # What a service behind Envoy would read: the headers gerrit-authz set.
            "x-gerrit-username": request.headers.get("x-gerrit-username"),
            "x-gerrit-account-id": request.headers.get("x-gerrit-account-id"),
            "x-authz-rule": request.headers.get("x-authz-rule"),
            "identity": _identity_json(getattr(request.state, "authz", None)),
        }

    @app.put("/artifacts/{project:path}/-/{branch}/{file:path}")  # rule upload-artifacts
    async def upload_artifact(
        project: str, branch: str, file: str, request: Request, who: CurrentIdentity
    ) -> dict[str, Any]:
        size = len(await request.body())
        return {"stored": f"{project}@{branch}:{file}", "bytes": size, "by": who.username}

    @app.post("/deploy/{change}")  # rule deploy
    async def deploy(change: int, who: CurrentIdentity) -> dict[str, Any]:
        return {"deploying": change, "by": who.username, "decision_id": who.decision_id}

    @app.get("/admin/caches")  # rule admin-api
    async def admin_caches(who: CurrentIdentity) -> dict[str, Any]:
        return {"caches": [], "by": who.username, "rule": who.rule}

    @app.get("/dashboard/me")  # rule dashboard (GET, HEAD)
    async def me(who: CurrentIdentity) -> dict[str, Any] | None:
        return _identity_json(who)

    @app.get("/dashboard/whoami")  # rule dashboard
    async def whoami(request: Request, who: OptionalIdentity) -> dict[str, Any]:
        # request.user / request.auth are Starlette's; `who` is the same identity through the dependency.
        return {"user": request.user.display_name, "authenticated": who is not None, "scopes": request.auth.scopes}

    @app.websocket("/dashboard/ws")  # rule dashboard (the handshake is a GET)
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        identity = getattr(websocket.state, "authz", None)
        await websocket.send_json({"hello": identity.username if identity else None})
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    # Swagger UI at /docs and the document it reads are public; the schemes make its "Authorize" button work.
    public = ("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json")
    install_openapi_security(app, ("jwt", "gerrit_http_credentials"), exclude_paths=public)
    if protect:
        options: dict[str, Any] = {"exclude_paths": public}
        if "GERRIT_AUTHZ_TIMEOUT" in os.environ:
            options["timeout"] = float(os.environ["GERRIT_AUTHZ_TIMEOUT"])
        options.update(middleware)
        app.add_middleware(
            AuthzMiddleware, target=target or os.environ.get("GERRIT_AUTHZ_TARGET", DEFAULT_TARGET), **options
        )
    return app


app = create_app()
