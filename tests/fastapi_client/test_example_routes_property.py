"""Property: for any path shape, the example app's router and the example policy pick the same route.

Hypothesis builds paths from the app's own route templates, filled and respelled in every way that matters
(case, ``%2F``/``%2f``, trailing slashes, dot-segments, ``.json`` suffixes), and sends nothing over the network:
the app's route is what Starlette's router picks for the decoded path (as uvicorn hands it over), the policy's
rule is what :class:`authz_server._policy.Policy` picks for the raw path. Whenever the app would run a handler and
the policy did not refuse, the rule is the one written for that route (``tests/e2e/test_examples_pair.py`` drives
the same pair for real). On the old example policy it finds ``GET /artifacts/p/p/-/p/p`` under ``signed-in``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from _support.authz import example_config_data
from _support.example_routes import RULE_FOR, UNCHECKED
from fastapi_support import example_module
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Match, Route

from authz_server._input import parse_check_request
from authz_server._policy import Policy
from authz_server.checkrequest import build_check_request
from authz_server.config import parse_config
from authz_server.errors import BadRequest

POLICY = Policy.from_config(parse_config(example_config_data()).rules)
APP: Any = example_module().create_app("127.0.0.1:1")

WORDS = ["p", "q", "infra", "deploy-tools", "main", "x.json", "app.tar", "12", "admin", "me", "-"]
TEMPLATES = [path for _, path in RULE_FOR] + ["/dashboard", "/deploy", "/admin/{x}", "/{x:path}"]


@st.composite
def filled(draw: st.DrawFn) -> str:
    """A route template of the app with its captures filled (a path capture with one to three words)."""
    out = []
    for seg in draw(st.sampled_from(TEMPLATES)).split("/")[1:]:
        if seg.endswith(":path}"):
            out.append("/".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3))))
        elif seg.startswith("{"):
            out.append(draw(st.sampled_from(WORDS)))
        else:
            out.append(seg)
    return "/" + "/".join(out)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A filled template in another spelling: a slash as %2F/%2f, upper case, a trailing slash, a .json
    suffix, a dot-segment detour."""
    path = draw(filled())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["slash", "case", "trailing", "suffix", "dots"]))
        slashes = [i for i, c in enumerate(path) if c == "/" and i > 0]
        if kind == "slash" and slashes:
            i = draw(st.sampled_from(slashes))
            path = path[:i] + draw(st.sampled_from(["%2F", "%2f"])) + path[i + 1 :]
        elif kind == "case":
            path = path.upper() if draw(st.booleans()) else path.title()
        elif kind == "trailing":
            path += "/"
        elif kind == "suffix":
            path += ".json"
        elif kind == "dots" and slashes:
            i = draw(st.sampled_from(slashes))
            path = path[:i] + draw(st.sampled_from(["/x/%2e%2e", "/%2e", "/x%2F..", "/x/%2E%2E"])) + path[i:]
    return path


def app_route(method: str, raw: str) -> str | None:
    """The route path Starlette would run a handler for (uvicorn decodes the whole path, %2F included)."""
    scope = {"type": "http", "method": method, "path": unquote(raw), "root_path": "", "headers": []}
    for route in APP.router.routes:
        if isinstance(route, Route) and route.matches(scope)[0] == Match.FULL:
            return route.path
    return None


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]), paths())
def test_the_app_never_runs_a_handler_under_another_routes_rule(method: str, raw: str) -> None:
    route = app_route(method, raw)
    if route is None or route in UNCHECKED:
        return
    try:
        match = POLICY.match(parse_check_request(build_check_request(method, raw)))
    except BadRequest:
        return  # refused: the handler does not run
    if match is None:
        return  # no rule names it: 403
    assert match.rule.name == RULE_FOR[("GET" if method == "HEAD" else method, route)], (method, raw, route)
