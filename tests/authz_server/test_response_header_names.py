"""Identity headers in every spelling: what the Check answer sets and removes, read the way upstreams read names.

WSGI/CGI servers map a header name to ``HTTP_`` + upper-case with ``-`` as ``_``, so ``x_gerrit_account_id`` and
``X-Gerrit-Account-Id`` are one environ key. After Envoy applies the answer (set by name, remove by name), no name
that maps to an identity key may be left but the ones the service set.
"""

from __future__ import annotations

import string

from _support.factories import make_input
from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server._engine import Decision
from authz_server._facts import Account
from authz_server._identity import Identity, Principal
from authz_server._response import to_check_response
from authz_server.checkrequest import IDENTITY_HEADERS, is_identity_header
from authz_server.errors import PermissionDenied

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
ALICE_IDENTITY = Identity(Principal("test_token", "alice", account=ALICE), ALICE, "gerrit")


def wsgi_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def upstream_sees(sent: dict[str, str], decision: Decision) -> dict[str, list[str]]:
    """The WSGI environ keys (with every value) an upstream reads after Envoy applied the answer."""
    inp = make_input("GET", "/artifacts/p/-/main/a", sent)
    response = to_check_response(decision, inp)
    ok = response.ok_response
    set_names = {o.header.key for o in ok.headers}
    remove = set(ok.headers_to_remove)
    assert not remove & set_names, "a header both set and removed"
    after: dict[str, str] = {k: v for k, v in inp.headers.items() if k not in set_names and k not in remove}
    after.update({o.header.key: o.header.value for o in ok.headers})
    environ: dict[str, list[str]] = {}
    for name, value in after.items():
        environ.setdefault(wsgi_key(name), []).append(value)
    return environ


DECISIONS = [
    Decision("d1", None, "read-artifacts", ALICE_IDENTITY),  # an identity: the service sets account headers
    Decision("d2", None, "health"),  # `anyone`: no identity, nothing about the account is set
    Decision("d3", PermissionDenied("denied", "x"), "deploy", ALICE_IDENTITY, shadow=True),  # sets x-authz-shadow
]


def spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` with each letter in either case and each ``-`` as ``-`` or ``_``."""
    parts = [st.sampled_from(["-", "_"]) if c == "-" else st.sampled_from(sorted({c.lower(), c.upper()})) for c in name]
    return st.tuples(*parts).map("".join)


_NAME_CHARS = string.ascii_letters + string.digits + "-_"


@st.composite
def identity_like_names(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from([*IDENTITY_HEADERS, "x-gerrit-", "x-authz-"]))
    suffix = draw(st.text(_NAME_CHARS, max_size=8)) if base.endswith("-") else ""
    return draw(spellings(base)) + suffix


class TestSpellings:
    def test_underscore_spelling_of_a_set_header_is_removed(self) -> None:
        inp = make_input("GET", "/healthz", {"x_gerrit_account_id": "1", "X-Authz_Rule": "admin-api"})
        response = to_check_response(DECISIONS[0], inp)
        remove = set(response.ok_response.headers_to_remove)
        assert {"x_gerrit_account_id", "x-authz_rule"} <= remove
        assert "x-gerrit-account-id" not in remove  # set by the service: overwritten, never listed

    def test_the_fixed_set_is_removed_or_overwritten_even_when_not_sent(self) -> None:
        for decision in DECISIONS:
            response = to_check_response(decision, make_input("GET", "/healthz"))
            ok = response.ok_response
            covered = {o.header.key for o in ok.headers} | set(ok.headers_to_remove)
            assert set(IDENTITY_HEADERS) <= covered, decision

    def test_other_headers_are_left_alone(self) -> None:
        inp = make_input("GET", "/healthz", {"x-gerritish": "1", "x_other": "2", "authorization": "Basic x"})
        remove = set(to_check_response(DECISIONS[1], inp).ok_response.headers_to_remove)
        assert not remove & {"x-gerritish", "x_other", "authorization"}

    @settings(max_examples=300, deadline=None)
    @given(st.lists(identity_like_names(), min_size=1, max_size=6), st.sampled_from(range(len(DECISIONS))))
    def test_no_spelling_reaches_an_environ_key_but_what_the_service_set(self, names: list[str], which: int) -> None:
        decision = DECISIONS[which]
        sent = {name: f"spoof-{i}" for i, name in enumerate(names)}
        environ = upstream_sees(sent, decision)
        inp = make_input("GET", "/healthz")
        expected = {
            wsgi_key(o.header.key): [o.header.value] for o in to_check_response(decision, inp).ok_response.headers
        }
        seen = {k: v for k, v in environ.items() if is_identity_header(k[len("HTTP_") :])}
        assert seen == expected

    @given(identity_like_names())
    def test_every_spelling_is_an_identity_header(self, name: str) -> None:
        assert is_identity_header(name)
