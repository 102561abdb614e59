"""The warm path renders from kept templates: a rendered allow and an audit line are exactly what building them
from scratch gives, whatever came before (the templates are keyed by everything they read)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server._audit import _decision_fields, audit_line
from authz_server._engine import Decision
from authz_server._facts import Account
from authz_server._identity import Identity, Principal
from authz_server._input import CheckInput
from authz_server._response import _SPELLED, _allowed_template, allowed_response, to_check_response
from authz_server.checkrequest import IDENTITY_HEADERS, is_identity_header
from authz_server.errors import BadRequest, PermissionDenied, Unauthenticated, Unavailable, status_for

texts = st.text(max_size=12)  # any code point: quotes, backslashes, control characters, non-ASCII, surrogates
accounts = st.none() | st.builds(Account, st.integers(1, 3), st.sampled_from(["", "alice", "bob"]), texts, texts)
errors = st.none() | st.builds(
    lambda kind, code, reason: kind(code, reason),
    st.sampled_from([PermissionDenied, Unauthenticated, Unavailable, BadRequest]),
    st.sampled_from(["requirement_failed", "invalid_token", "gerrit_unavailable", "x"]),
    texts,
)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    account = draw(accounts)
    principal = draw(
        st.none() | st.builds(Principal, st.sampled_from(["jwt", "mtls"]), texts, account=st.just(account))
    )
    identity = Identity(principal, account, draw(st.sampled_from([None, "cache", "gerrit"])))
    return Decision(
        draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=24)),
        draw(errors),
        draw(st.sampled_from(["read", "deploy", 'q"uote'])),
        identity,
        shadow=draw(st.booleans()),
        memo=draw(st.booleans()),
    )


header_names = st.sampled_from(
    [
        "accept",
        "x-forwarded-for",
        "x-gerrit-account-id",
        "x_gerrit_account_id",
        "x-authz-rule",
        "x_authz_x",
        "x-gerrit-Z",
    ]
)
inputs = st.none() | st.builds(
    lambda names, method, host, path, source, request_id: CheckInput(
        method, path, "", host, "https", {n.lower(): "v" for n in names}, source, "", request_id
    ),
    st.lists(header_names, max_size=4),
    st.sampled_from(["GET", "POST"]),
    texts,
    texts,
    texts,
    texts,
)


def reference_allow(decision: Decision, inp: CheckInput | None) -> Any:
    """The allow built from scratch, with the removals spelled out here rather than taken from the module."""
    client_sent = tuple(h for h in (inp.headers if inp else ()) if is_identity_header(h) and h not in IDENTITY_HEADERS)
    shadow = decision.error.code if decision.error is not None else None
    return allowed_response(decision.decision_id, decision.rule, shadow, decision.identity.account, client_sent)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(decisions(), inputs), min_size=1, max_size=6))
def test_a_rendered_allow_is_the_one_built_from_scratch(checks: list[tuple[Decision, CheckInput | None]]) -> None:
    for decision, inp in checks:
        if decision.allowed:
            assert to_check_response(decision, inp) == reference_allow(decision, inp)


def reference_line(
    decision: Decision, inp: CheckInput | None, elapsed_ms: float, via: str, trace: tuple[str, str] | None
) -> str:
    identity = decision.identity
    principal, account, error = identity.principal, identity.account, decision.error
    line: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "allowed": decision.allowed,
        "http_status": status_for(error).http,
        "code": error.code if error else "",
        "reason": decision.reason,
        "rule": decision.rule,
        "identity_source": principal.source if principal else "",
        "subject": principal.subject if principal else "",
        "account_id": account.id if account else None,
        "username": account.username if account else "",
        "method": inp.method if inp else "",
        "host": inp.host if inp else "",
        "path": inp.path if inp else "",
        "source_address": inp.source_address if inp else "",
        "request_id": inp.request_id if inp else "",
        "elapsed_ms": round(elapsed_ms, 3),
        "via": via,
        "shadow": decision.shadow,
        "memo": decision.memo,
    }
    if trace is not None:
        line["trace_id"], line["span_id"] = trace
    return json.dumps(line, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            decisions(),
            inputs,
            st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10**6),
            st.sampled_from(["check", "explain", "fastapi"]),
            st.none() | st.tuples(texts, texts),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_an_audit_line_is_the_one_encoded_from_scratch(
    lines: list[tuple[Decision, CheckInput | None, float, str, tuple[str, str] | None]],
) -> None:
    for decision, inp, elapsed, via, trace in lines:
        text = audit_line(decision, inp, elapsed_ms=elapsed, via=via, trace=trace)
        assert text == reference_line(decision, inp, elapsed, via, trace)
        assert json.loads(text)["decision_id"] == decision.decision_id


def test_templates_are_reused_across_decision_ids() -> None:
    """Two allows that differ only in their id share a template, and neither id leaks into the other."""
    account = Account(7, "alice", "a@example.com")
    first = Decision("id-1", None, "read", Identity(Principal("jwt", "alice", account=account), account, "cache"))
    second = Decision("id-2", None, "read", first.identity)
    for decision in (first, second, first):
        response = to_check_response(decision, None)
        ids = [o.header.value for o in response.ok_response.headers if o.header.key == "x-authz-decision-id"]
        assert ids == [decision.decision_id]
        assert response.dynamic_metadata.fields["decision_id"].string_value == decision.decision_id
        assert json.loads(audit_line(decision, None, elapsed_ms=1, via="check"))["decision_id"] == decision.decision_id


@given(st.text(alphabet="xX-_gerritGERRITauthzAUTHZ", max_size=12))
def test_the_identity_header_prefilter_keeps_every_identity_header(name: str) -> None:
    lowered = name.lower()
    if is_identity_header(lowered):
        assert lowered.startswith(_SPELLED)


def test_what_a_client_chose_is_never_kept() -> None:
    """Identity-header names a client sent, and long reasons (which can quote its path), are rendered from scratch:
    the kept tables hold only what the configuration and Gerrit bound."""
    _allowed_template.cache_clear()
    _decision_fields.cache_clear()
    account = Account(7, "alice", "a@example.com")
    allow = Decision("id-1", None, "read", Identity(Principal("jwt", "alice", account=account), account, "cache"))
    spoofing = CheckInput("GET", "/a", "", "h", "https", {"x_gerrit_" + "a" * 4000: "v"})
    response = to_check_response(allow, spoofing)
    assert "x_gerrit_" + "a" * 4000 in response.ok_response.headers_to_remove
    assert _allowed_template.cache_info().currsize == 0
    to_check_response(allow, CheckInput("GET", "/a", "", "h", "https", {}))
    assert _allowed_template.cache_info().currsize == 1

    deny = Decision("id-2", PermissionDenied("no_matching_rule", "no rule matches GET /" + "p" * 8000), "")
    line = json.loads(audit_line(deny, None, elapsed_ms=1, via="check"))
    assert line["reason"].endswith("p" * 8000)
    assert _decision_fields.cache_info().currsize == 0
