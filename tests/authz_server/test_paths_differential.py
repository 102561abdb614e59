"""Differential property test: the rule gerrit-authz picks equals a tiny reference router's pick, or it is a 400.

Paths are built from the example policy's own literals, captures and escapes. The reference decodes the raw path
independently (``urllib.parse.unquote`` per part) and routes it two ways: segment view (``%2F`` inside its
segment) and slash view (``%2F`` read as ``/``, what Starlette routes on). gerrit-authz must pick the segment
view's rule with the same captures, and only where the two views agree or the rule's captures take the ``%2F``;
otherwise it must answer 400 ``ambiguous_path`` -- and the reference must confirm the views really differ.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from _support.authz import check_request, example_config_data
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authz_server._input import parse_check_request
from authz_server._policy import Policy
from authz_server.config import RuleConfig, parse_config
from authz_server.errors import BadRequest

RULES: list[RuleConfig] = parse_config(example_config_data()).rules
POLICY = Policy.from_config(RULES)
IN_SEGMENT = "\x00"  # the reference's mark for a %2F kept inside a segment (a decoded NUL is refused anyway)

Pick = tuple[str, dict[str, str]] | None


def _ref_template(parts: list[str], segs: list[str]) -> dict[str, str] | None:
    """Naive backtracking matcher: fine for the short paths generated here."""
    if not parts:
        return {} if not segs else None
    head, rest = parts[0], parts[1:]
    m = re.fullmatch(r"\{(\w+)(:path)?\}", head)
    if m is None:
        if not segs or segs[0] != head:
            return None
        return _ref_template(rest, segs[1:])
    if m.group(2) is None:
        if not segs or not segs[0]:
            return None
        found = _ref_template(rest, segs[1:])
        return None if found is None else {m.group(1): segs[0].replace(IN_SEGMENT, "/"), **found}
    for take in range(len(segs), 0, -1):
        # A final {x:path} also takes a trailing slash (Starlette's ".*" does); no other empty segment.
        if "" in (segs[: take - 1] if not rest and take == len(segs) else segs[:take]):
            continue
        found = _ref_template(rest, segs[take:])
        if found is not None:
            return {m.group(1): "/".join(segs[:take]).replace(IN_SEGMENT, "/"), **found}
    return None


def reference(method: str, segs: list[str]) -> Pick:
    for rule in RULES:
        methods = {x.upper() for x in rule.match.methods or ()}
        if methods and method not in methods and not (method == "HEAD" and "GET" in methods):
            continue
        if rule.match.path_prefix is not None:
            if ("/" + "/".join(segs)).startswith(rule.match.path_prefix):
                return rule.name, {}
            continue
        if rule.match.path is None:
            return rule.name, {}
        found = _ref_template(rule.match.path.split("/")[1:], segs)
        if found is not None:
            return rule.name, found
    return None


def views(raw: str) -> tuple[list[str], list[str]] | None:
    """(segment view, slash view) of a raw path, or None when a careful upstream could read it two ways."""
    if re.search(r"[\x00-\x20\x7f\\;]", raw) or re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        return None
    seg_view: list[str] = []
    slash: list[str] = []
    try:
        for raw_seg in raw.split("/")[1:]:
            parts = [unquote(p, errors="strict") for p in re.split("%2[Ff]", raw_seg)]
            seg_view.append(IN_SEGMENT.join(parts))
            slash.extend(parts)
    except UnicodeDecodeError:
        return None
    if any(re.search(r"[\x00-\x1f\x7f\\]", s) for s in slash):
        return None
    if any(s in (".", "..") for s in slash) or "" in slash[:-1]:
        return None
    return seg_view, slash


WORDS = ["artifacts", "admin", "deploy", "healthz", "-", "+", "main", "out", "app.tar", "platform", "build", "12"]
ODD = ["", ".", "..", "%2e%2e", "%2E", "%252F", "%25", "%FF", "%00", "%C3%A9", "a%20b", "%3F", "%23"]


@st.composite
def segment(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(WORDS + ODD))
    if "%" in word or not draw(st.booleans()):
        return word
    # Percent-encode some characters (either hex case): the rule must not depend on the spelling.
    return "".join(f"%{ord(c):02{draw(st.sampled_from('Xx'))}}" if draw(st.integers(0, 3)) == 0 else c for c in word)


@st.composite
def raw_path(draw: st.DrawFn) -> str:
    segs = draw(st.lists(segment(), min_size=1, max_size=7))
    seps = [draw(st.sampled_from(["/", "/", "/", "%2F", "%2f"])) for _ in segs[1:]]
    out = "/" + segs[0] + "".join(sep + seg for sep, seg in zip(seps, segs[1:], strict=True))
    return out + draw(st.sampled_from(["", "", "/", "%2F"]))


def _check(method: str, raw: str) -> None:
    read = views(raw)
    try:
        found = POLICY.match(parse_check_request(check_request(method, raw)))
    except BadRequest as exc:
        if exc.code == "ambiguous_path":
            assert read is not None
            seg_pick, slash_pick = reference(method, read[0]), reference(method, read[1])
            # A real disagreement between the views, and not one a capture of the chosen rule absorbs.
            assert (seg_pick and seg_pick[0]) != (slash_pick and slash_pick[0])
            assert seg_pick is None or next(r for r in RULES if r.name == seg_pick[0]).match.path is None
        else:
            assert read is None, f"{raw!r} refused ({exc.code}) though the reference reads it one way"
        return
    assert read is not None, f"{raw!r} accepted though an upstream could read it two ways"
    seg_pick, slash_pick = reference(method, read[0]), reference(method, read[1])
    got: Pick = None if found is None else (found.rule.name, dict(found.captures))
    assert got == seg_pick
    if "%2f" in raw.lower().replace("%252f", ""):
        template_rule = got is not None and found is not None and found.rule.template is not None
        assert template_rule or (slash_pick and slash_pick[0]) == (got and got[0])
    else:
        assert slash_pick == seg_pick


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]), raw_path())
@example("GET", "/artifacts/platform%2Fbuild/-/main/out/app.tar")
@example("GET", "/admin%2Fx")
@example("POST", "/deploy%2F12")
@example("HEAD", "/artifacts/p/-/main/a")
@example("GET", "/%61rtifacts/p/%2D/main/x")
def test_the_rule_is_the_reference_routers_or_a_400(method: str, raw: str) -> None:
    _check(method, raw)


def test_the_example_policys_real_cases_stay_allowed() -> None:
    inp = parse_check_request(check_request("GET", "/artifacts/platform%2Fbuild/-/main/out/app.tar"))
    found = POLICY.match(inp)
    assert found is not None
    assert (found.rule.name, dict(found.captures)) == (
        "read-artifacts",
        {"project": "platform/build", "branch": "main", "file": "out/app.tar"},
    )
