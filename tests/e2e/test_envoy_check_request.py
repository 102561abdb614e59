"""A CheckRequest recorded from a real Envoy (``tests/data/envoy_check_request.json``) against our parser and our
builder, and the recording against a live Envoy (regenerate with ``scripts/record_envoy_check_request.py``).

How Envoy's CheckRequest differs from ``authz_server.checkrequest.build_check_request`` for the same request:
- headers Envoy adds before ext_authz: ``x-request-id``, ``x-forwarded-proto``, ``x-forwarded-for`` and
  ``x-envoy-external-address`` (``use_remote_address: true``); the builder adds only ``x-request-id``;
- the client's ``Host`` arrives as ``:authority`` only (no ``host`` header); hop-by-hop ``connection`` is dropped;
- ``http.id`` is Envoy's stream id (a decimal number), not the ``x-request-id`` UUID;
- Envoy also fills ``attributes.destination``, ``request.time`` and (empty) ``metadata_context`` /
  ``route_metadata_context``, which the builder leaves unset.
Method, path (with query, escapes as sent), host, scheme, protocol and every other header are the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _support.envoy import (
    ENVOY_ADDED_HEADERS,
    RECORDED_BASIC,
    RECORDED_CLIENT_HEADERS,
    RECORDED_HOST,
    RECORDED_METHOD,
    RECORDED_PATH,
    record_check_request,
    scrub_volatile,
)
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf import json_format

from authz_server._input import parse_check_request
from authz_server.checkrequest import build_check_request, join_headers

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "envoy_check_request.json"


def recorded() -> CheckRequest:
    return json_format.Parse(FIXTURE.read_text(), CheckRequest())


def test_recorded_fixture_parses_to_the_request_sent() -> None:
    inp = parse_check_request(recorded())
    assert inp.method == "GET"
    assert inp.path == "/artifacts/platform/build/-/main/out/app.tar"
    assert inp.query == "x=1"
    assert inp.host == RECORDED_HOST
    assert inp.scheme == "http"
    assert inp.source_address == "127.0.0.1"
    assert inp.headers["authorization"] == RECORDED_BASIC
    assert inp.headers["user-agent"] == RECORDED_CLIENT_HEADERS["user-agent"]
    assert inp.headers[":path"] == RECORDED_PATH
    assert inp.headers[":authority"] == RECORDED_HOST
    assert "host" not in inp.headers and "connection" not in inp.headers
    assert set(inp.headers) >= ENVOY_ADDED_HEADERS
    assert not inp.context_extensions and not inp.metadata


def test_fixture_holds_only_the_fake_credential() -> None:
    text = FIXTURE.read_text()
    assert "cmVjb3JkZWQ6cmVjb3JkZWQtcGFzc3dvcmQ=" in text  # base64("recorded:recorded-password")
    assert text.count("Basic ") == 1


def test_builder_matches_what_envoy_sends() -> None:
    envoy_http = recorded().attributes.request.http
    client_headers = {k: v for k, v in RECORDED_CLIENT_HEADERS.items() if k != "host"}
    built = build_check_request(
        RECORDED_METHOD,
        RECORDED_PATH,
        host=RECORDED_HOST,
        headers=join_headers(client_headers.items()),
        request_id="00000000-0000-4000-8000-000000000000",
        source_address="127.0.0.1",
        source_port=40000,
    ).attributes.request.http
    for name in ("method", "path", "host", "scheme", "protocol"):
        assert getattr(built, name) == getattr(envoy_http, name), name
    ours = {k: v for k, v in built.headers.items() if k != "x-request-id"}
    theirs = {k: v for k, v in envoy_http.headers.items() if k not in ENVOY_ADDED_HEADERS}
    assert ours == theirs
    # Documented differences: the headers Envoy adds, and what http.id means.
    assert set(envoy_http.headers) - set(built.headers) == ENVOY_ADDED_HEADERS - {"x-request-id"}
    assert envoy_http.id.isdigit() and built.id == built.headers["x-request-id"]


@pytest.mark.envoy
async def test_fixture_is_what_the_example_envoy_sends_today(tmp_path: Path) -> None:
    live = scrub_volatile(await record_check_request(tmp_path))
    assert json_format.MessageToDict(live) == json_format.MessageToDict(recorded()), (
        "Envoy now sends a different CheckRequest: run scripts/record_envoy_check_request.py and review the diff"
    )
