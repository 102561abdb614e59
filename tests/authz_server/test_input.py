"""parse_check_request and normalize_path: what a decision sees of Envoy's CheckRequest."""

from __future__ import annotations

import pytest
from _support.factories import make_check_request, make_input

from authz_server._input import MAX_PATH_BYTES, normalize_path, parse_check_request
from authz_server.errors import BadRequest


class TestParseCheckRequest:
    def test_method_path_and_query_are_split(self) -> None:
        inp = make_input("get", "/artifacts/x/-/main/a.tar?download=1&x=%2F")
        assert inp.method == "GET"
        assert inp.path == "/artifacts/x/-/main/a.tar"
        assert inp.query == "download=1&x=%2F"

    def test_path_without_query_has_empty_query(self) -> None:
        inp = make_input("GET", "/a")
        assert (inp.path, inp.query) == ("/a", "")

    def test_path_is_normalised(self) -> None:
        assert make_input("GET", "/%61rtifacts/p%2fq").path == "/artifacts/p%2Fq"

    def test_query_and_fragment_like_escapes_stay_out_of_the_query(self) -> None:
        # %3F and %23 are path characters once decoded: the query starts at the first literal '?'.
        inp = make_input("GET", "/a%3Fb%23c?x=%3F")
        assert (inp.path, inp.query) == ("/a?b#c", "x=%3F")

    def test_header_names_are_lower_cased(self) -> None:
        inp = make_input("GET", "/", {"Authorization": "Bearer x", "X-Gerrit-Foo": "1"})
        assert inp.headers == {"authorization": "Bearer x", "x-gerrit-foo": "1"}

    def test_names_another_caller_sent_unlowered_are_lower_cased(self) -> None:
        """Envoy lower-cases names; a CheckRequest from anything else is read the same way."""
        request = make_check_request("GET", "/")
        request.attributes.request.http.headers.update({"Authorization": "Bearer x", "X_Gerrit_Foo": "1", "123": "n"})
        assert parse_check_request(request).headers == {"authorization": "Bearer x", "x_gerrit_foo": "1", "123": "n"}

    def test_header_map_value_and_raw_value_with_repeats_joined(self) -> None:
        inp = make_input(
            "GET",
            "/",
            header_map=[("Accept", "text/plain"), ("X-Raw", b"raw-bytes"), ("accept", b"application/json")],
        )
        assert inp.headers == {"accept": "text/plain,application/json", "x-raw": "raw-bytes"}

    def test_header_map_wins_over_headers(self) -> None:
        inp = make_input("GET", "/", {"x-plain": "1"}, header_map=[("x-raw", "2")])
        assert inp.headers == {"x-raw": "2"}

    def test_header_map_raw_value_that_is_not_utf8_is_read_as_latin1(self) -> None:
        # encode_raw_headers hands over the bytes as received; one odd byte must not turn into a 400.
        inp = make_input("GET", "/", header_map=[("x-bin", b"caf\xe9 \xff"), ("x-utf8", "caf\u00e9".encode())])
        assert inp.headers == {"x-bin": "caf\u00e9 \u00ff", "x-utf8": "caf\u00e9"}

    def test_host_is_lower_cased_and_scheme_kept(self) -> None:
        inp = make_input("GET", "/", host="Gerrit.Example.COM:8443", scheme="https")
        assert (inp.host, inp.scheme) == ("gerrit.example.com:8443", "https")

    def test_pseudo_headers_fill_in_missing_attributes(self) -> None:
        request = make_check_request(
            "",
            "",
            {":method": "post", ":path": "/p?q=1", ":authority": "H.example", ":scheme": "http"},
            host="",
            scheme="",
        )
        inp = parse_check_request(request)
        assert (inp.method, inp.path, inp.query, inp.host, inp.scheme) == ("POST", "/p", "q=1", "h.example", "http")

    def test_source_address_and_principal(self) -> None:
        inp = make_input("GET", "/", source_address="10.1.2.3", source_principal="spiffe://cluster/ns/ci/sa/bot")
        assert inp.source_address == "10.1.2.3"
        assert inp.source_principal == "spiffe://cluster/ns/ci/sa/bot"

    def test_no_source_gives_empty_strings(self) -> None:
        inp = make_input("GET", "/")
        assert (inp.source_address, inp.source_principal) == ("", "")

    def test_request_id_prefers_the_x_request_id_header(self) -> None:
        # x-request-id is what the upstream and Envoy's access log see; http.id is only a stream number.
        assert make_input("GET", "/", {"x-request-id": "rid"}, request_id="17").request_id == "rid"
        assert make_input("GET", "/", request_id="17").request_id == "17"

    def test_context_extensions(self) -> None:
        inp = make_input("GET", "/", context_extensions={"virtual_host": "artifacts", "tier": "prod"})
        assert dict(inp.context_extensions) == {"virtual_host": "artifacts", "tier": "prod"}

    def test_metadata_context_becomes_plain_dicts(self) -> None:
        payload = {"sub": "alice", "email": "alice@example.com", "groups": ["a", "b"], "nested": {"n": 1}}
        inp = make_input("GET", "/", metadata={"envoy.filters.http.jwt_authn": {"jwt_payload": payload}})
        meta = inp.metadata["envoy.filters.http.jwt_authn"]
        assert type(meta) is dict
        assert type(meta["jwt_payload"]) is dict
        assert meta["jwt_payload"] == {**payload, "nested": {"n": 1.0}}
        assert type(meta["jwt_payload"]["groups"]) is list

    def test_missing_metadata_and_extensions_are_empty(self) -> None:
        inp = make_input("GET", "/")
        assert dict(inp.metadata) == {}
        assert dict(inp.context_extensions) == {}

    def test_missing_http_attributes_is_bad_request(self) -> None:
        with pytest.raises(BadRequest) as info:
            parse_check_request(make_check_request(http=False))
        assert info.value.code == "malformed_request"

    def test_empty_check_request_is_bad_request(self) -> None:
        from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

        with pytest.raises(BadRequest):
            parse_check_request(CheckRequest())

    def test_missing_path_is_bad_request(self) -> None:
        with pytest.raises(BadRequest) as info:
            parse_check_request(make_check_request("GET", ""))
        assert info.value.code == "malformed_request"

    def test_missing_method_is_bad_request(self) -> None:
        with pytest.raises(BadRequest) as info:
            parse_check_request(make_check_request("", "/a"))
        assert info.value.code == "malformed_request"

    def test_malformed_path_in_request_is_bad_request(self) -> None:
        with pytest.raises(BadRequest) as info:
            parse_check_request(make_check_request("GET", "/a/../b?x=1"))
        assert info.value.code == "malformed_path"


class TestNormalizePath:
    def test_paths_up_to_8_kib_are_read_and_longer_ones_refused(self) -> None:
        assert normalize_path("/" + "a" * (MAX_PATH_BYTES - 1)) == "/" + "a" * (MAX_PATH_BYTES - 1)
        for raw in ("/" + "a" * MAX_PATH_BYTES, "/" + "\u00e9" * (MAX_PATH_BYTES // 2)):
            with pytest.raises(BadRequest) as info:
                normalize_path(raw)
            assert info.value.code == "path_too_long"

    def test_trailing_slash_and_trailing_encoded_slash_are_kept(self) -> None:
        assert normalize_path("/admin/") == "/admin/"
        assert normalize_path("/admin%2F") == "/admin%2F"

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/%61", "/a"),  # unreserved: decoded
            ("/%7e%2D%5f%2e", "/~-_."),
            ("/p%2fq", "/p%2Fq"),  # slash: kept encoded, upper-cased
            ("/p%2Fq", "/p%2Fq"),
            ("/a%20b", "/a b"),  # every other escape is decoded, reserved ones included
            ("/src/p/%2B/main/f", "/src/p/+/main/f"),
            ("/a%3Bb%3a%40%21", "/a;b:@!"),
            ("/caf%C3%A9", "/caf\u00e9"),
            ("/%25", "/%25"),  # a literal '%' stays escaped: the canonical path has one spelling per meaning
            ("/%252e%252e", "/%252e%252e"),  # no double decoding
            ("/%252F", "/%252F"),  # '%2F' as three characters, not an encoded slash
            ("/a%2f%25", "/a%2F%25"),
            ("/a/", "/a/"),  # trailing slash allowed
            ("/a/b/", "/a/b/"),
            ("/...", "/..."),
            ("/.hidden/a..b", "/.hidden/a..b"),
        ],
    )
    def test_accepted(self, raw: str, expected: str) -> None:
        assert normalize_path(raw) == expected

    @pytest.mark.parametrize(
        "raw",
        [
            "/a/../b",
            "/a/./b",
            "/..",
            "/.",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e/b",
            "/a/%2e/b",
            # Tomcat and Jetty drop ";params" before resolving dot-segments: "/public/..;/admin" is "/admin"
            "/public/..;/admin",
            "/public/..;jsessionid=x/admin",
            "/public/%2e%2e;/admin",
            "/a/.;/b",
            "//a",
            "/a//b",
            "/a//",
            "/a\\b",
            "/a%5Cb",
            "/a%5cb",
            "/a\x00b",
            "/a%00b",
            "/a\tb",
            "/a\nb",
            "/a\rb",
            "/a b",
            "/a\x7fb",
            "/a%zz",
            "/a%2",
            "/a%",
            "/a%%41",
            "/a%09b",  # encoded control bytes
            "/a%7Fb",
            "/a%0Ab",
            "/%FF",  # not UTF-8 once decoded
            "/caf%C3",
            "/a%2F..%2Fb",  # one segment here, a dot-segment to an upstream that decodes %2F
            "/a%2F.",
            "/a%2F%2Fb",
            "/%2Fa",
            "/a/..%3B/b",
            "a/b",
            "",
        ],
    )
    def test_refused_as_malformed_path(self, raw: str) -> None:
        with pytest.raises(BadRequest) as info:
            normalize_path(raw)
        assert info.value.code == "malformed_path"
