"""The example FastAPI app's routes and the example policy's rule written for each (shared by the tests that
check the two agree: one table, so they cannot drift apart)."""

from __future__ import annotations

__all__ = ["RULE_FOR", "UNCHECKED"]

# The rule written for each route of the example app (HEAD is served by the GET handler).
RULE_FOR: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "health",
    ("GET", "/artifacts/{project:path}/-/{branch}/{file:path}"): "read-artifacts",
    ("PUT", "/artifacts/{project:path}/-/{branch}/{file:path}"): "upload-artifacts",
    ("POST", "/deploy/{change}"): "deploy",
    ("GET", "/admin/caches"): "admin-api",
    ("GET", "/dashboard/me"): "dashboard",
    ("GET", "/dashboard/whoami"): "dashboard",
}
# Routes the example app serves without a Check (its `exclude_paths`): public by design, never with a rule.
UNCHECKED = {"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
