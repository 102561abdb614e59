"""Fuzz ``Authorization/Check`` over real gRPC: every input gets one of the contract's answers, never an RPC error.

A short bounded run (hypothesis, a few hundred inputs); bench/fuzz_check.py is the long recorded run.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server._response import http_response
from authz_server.checkrequest import build_check_request

CONTRACT = {0: 200, 3: 400, 7: 403, 14: 503, 16: 401}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

segment = st.one_of(
    st.sampled_from(["artifacts", "admin", "deploy", "-", "+", "main", "platform%2Fbuild", "..", "%2e", "%252F"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=12),
)
paths = st.one_of(
    st.builds(lambda segs, sep: "/" + sep.join(segs), st.lists(segment, max_size=8), st.sampled_from(["/", "%2F"])),
    st.text(max_size=40),
    st.integers(8000, 8300).map(lambda n: ("/artifacts/p/-/main/" + "a/" * n)[:n]),
)
headers = st.dictionaries(
    st.sampled_from(["authorization", "x-gerrit-username", "x-authz-rule", "accept", "x-request-id"]),
    st.one_of(st.sampled_from(["Basic YWxpY2U6c2VjcmV0", "Bearer a.b.c", "Basic ###"]), st.text(max_size=50)),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn) -> CheckRequest:
    method = draw(st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]), st.text(max_size=6)))
    request = build_check_request(method, draw(paths), host=draw(st.text(max_size=20)), headers=draw(headers))
    for key, raw in draw(
        st.lists(st.tuples(st.sampled_from([":path", "x-bin", "authorization"]), st.binary(max_size=16)), max_size=3)
    ):
        h = request.attributes.request.http.header_map.headers.add()
        h.key, h.raw_value = key, raw
    return request


@st.composite
def mutated(draw: st.DrawFn) -> CheckRequest:
    data = bytearray(draw(requests()).SerializeToString())
    for at, byte in draw(st.lists(st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)), max_size=6)):
        if data:
            data[at] = byte
    cut = draw(st.integers(0, len(data)))
    message = CheckRequest()
    try:
        message.ParseFromString(bytes(data[:cut]))
    except DecodeError:
        return CheckRequest()  # Envoy never sends bytes that are not a CheckRequest: the empty one stands in
    return message


@pytest.fixture(scope="module")
def stub(
    authz_process: tuple[subprocess.Popen[bytes], str],
) -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    proc, address = authz_process
    with grpc.insecure_channel(address) as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)
    assert proc.poll() is None, "gerrit-authz exited during the fuzz run"


def assert_contract_answer(response: CheckResponse) -> None:
    code = response.status.code
    assert code in CONTRACT
    if code == 0:
        assert response.HasField("ok_response")
        return
    answer = http_response(response)
    assert response.WhichOneof("http_response") == ("error_response" if code == 14 else "denied_response")
    assert answer.status.code == CONTRACT[code]
    body = json.loads(answer.body)
    assert body["error"] != "internal_error"  # an exception escaped the pipeline


@FUZZ
@given(requests())
def test_random_check_requests_get_a_contract_answer(
    stub: external_auth_pb2_grpc.AuthorizationStub, request: CheckRequest
) -> None:
    assert_contract_answer(stub.Check(request, timeout=10))


@FUZZ
@given(mutated())
def test_mutated_serialized_check_requests_get_a_contract_answer(
    stub: external_auth_pb2_grpc.AuthorizationStub, request: CheckRequest
) -> None:
    assert_contract_answer(stub.Check(request, timeout=10))


def test_an_8_kib_path_is_served_and_a_longer_one_is_400(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
    longest = ("/artifacts/p/-/main/" + "a/" * 5000)[:8192]
    too_long = longest + "b"
    # Matched (read-artifacts needs a permission, so without a credential: 401), not refused for its length.
    assert stub.Check(build_check_request("GET", longest), timeout=10).status.code == 16
    response = stub.Check(build_check_request("GET", too_long), timeout=10)
    assert response.status.code == 3
    assert json.loads(response.denied_response.body)["error"] == "path_too_long"
