"""to_check_response(): the contract's table of allowed and denied CheckResponses."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from _support.factories import FakeFacts, basic_auth, make_authorizer, make_check_request, make_input
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from google.protobuf.json_format import MessageToDict, MessageToJson

from authz_server._audit import AUDIT_LOGGER
from authz_server._engine import Decision
from authz_server._facts import Account
from authz_server._identity import Identity, Principal
from authz_server._input import CheckInput
from authz_server._response import http_response, to_check_response
from authz_server._servicer import AuthorizationServicer
from authz_server.errors import AuthzError, BadRequest, PermissionDenied, Unauthenticated, Unavailable

ALICE = Account(1000001, "alice", "alice@example.com", "Alice")
ALICE_IDENTITY = Identity(Principal("test_token", "alice", account=ALICE), ALICE, "gerrit")
OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def set_headers(response: CheckResponse) -> dict[str, str]:
    return {o.header.key: o.header.value for o in response.ok_response.headers}


def denied_headers(response: CheckResponse) -> dict[str, str]:
    return {o.header.key: o.header.value for o in response.denied_response.headers}


def allow(identity: Identity = ALICE_IDENTITY) -> Decision:
    return Decision("d-allow", None, "read-artifacts", identity)


def deny(error: AuthzError, rule: str = "deploy") -> Decision:
    return Decision("d-deny", error, rule, ALICE_IDENTITY)


def client_input(headers: dict[str, str]) -> CheckInput:
    return make_input("GET", "/artifacts/p/-/main/a", headers)


class TestAllowed:
    def test_status_ok_and_identity_headers_overwritten(self) -> None:
        response = to_check_response(allow(), client_input({}))
        assert response.status.code == 0
        assert response.WhichOneof("http_response") == "ok_response"
        assert set_headers(response) == {
            "x-gerrit-account-id": "1000001",
            "x-gerrit-username": "alice",
            "x-gerrit-email": "alice@example.com",
            "x-authz-rule": "read-artifacts",
            "x-authz-decision-id": "d-allow",
        }
        assert all(o.append_action == OVERWRITE for o in response.ok_response.headers)

    def test_email_only_when_known(self) -> None:
        account = Account(1000009, "robot")
        identity = Identity(Principal("gerrit_http_credentials", "robot", account=account), account)
        headers = set_headers(to_check_response(allow(identity), client_input({})))
        assert "x-gerrit-email" not in headers
        assert headers["x-gerrit-username"] == "robot"

    def test_client_sent_protected_headers_are_removed_unless_set(self) -> None:
        inp = client_input(
            {
                "X-Gerrit-Foo": "spoof",
                "x-authz-bar": "spoof",
                "x-gerrit-account-id": "1",  # set by the service: overwritten, so never listed
                "x-authz-rule": "spoof",
                "x-other": "kept",
                "authorization": "Bearer t",
            }
        )
        response = to_check_response(allow(), inp)
        remove = list(response.ok_response.headers_to_remove)
        # x-authz-shadow: part of the fixed identity set, removed although the client did not send it.
        assert sorted(remove) == ["x-authz-bar", "x-authz-shadow", "x-gerrit-foo"]
        assert not set(remove) & set(set_headers(response))

    def test_without_an_account_spoofed_identity_headers_are_removed(self) -> None:
        # An `anyone` rule: no identity. A client-sent x-gerrit-account-id must not reach the upstream.
        inp = client_input({"x-gerrit-account-id": "1", "x-gerrit-email": "boss@example.com"})
        response = to_check_response(Decision("d", None, "health"), inp)
        assert set_headers(response) == {"x-authz-rule": "health", "x-authz-decision-id": "d"}
        assert sorted(response.ok_response.headers_to_remove) == [
            "x-authz-shadow",
            "x-gerrit-account-id",
            "x-gerrit-email",
            "x-gerrit-username",
        ]

    def test_dynamic_metadata(self) -> None:
        response = to_check_response(allow(), client_input({}))
        assert MessageToDict(response.dynamic_metadata) == {
            "account_id": "1000001",  # a string, like every other value here ("" when unknown)
            "username": "alice",
            "rule": "read-artifacts",
            "decision_id": "d-allow",
        }


class TestDenied:
    @staticmethod
    def body(response: CheckResponse) -> dict[str, Any]:
        body = json.loads(response.denied_response.body)
        assert isinstance(body, dict)
        return body

    def test_401_missing_credentials(self) -> None:
        response = to_check_response(deny(Unauthenticated("missing_credentials", "log in")), None)
        assert (response.status.code, response.denied_response.status.code) == (16, 401)
        assert denied_headers(response)["www-authenticate"] == 'Bearer realm="gerrit-authz"'
        assert "retry-after" not in denied_headers(response)

    def test_401_invalid_token(self) -> None:
        response = to_check_response(deny(Unauthenticated("invalid_token", "bad signature")), None)
        assert denied_headers(response)["www-authenticate"] == 'Bearer realm="gerrit-authz", error="invalid_token"'

    def test_403_body_and_content_type(self) -> None:
        decision = deny(PermissionDenied("requirement_failed", "rule 'deploy': group 'release-managers': no"))
        response = to_check_response(decision, client_input({}))
        assert response.WhichOneof("http_response") == "denied_response"
        assert (response.status.code, response.denied_response.status.code) == (7, 403)
        assert self.body(response) == {
            "error": "requirement_failed",
            "reason": "rule 'deploy': group 'release-managers': no",
            "rule": "deploy",
            "decision_id": "d-deny",
        }
        headers = denied_headers(response)
        assert headers["content-type"] == "application/json"
        assert "www-authenticate" not in headers and "retry-after" not in headers

    def test_403_no_matching_rule_has_an_empty_rule(self) -> None:
        response = to_check_response(Decision("d", PermissionDenied("no_matching_rule", "none")), None)
        assert self.body(response)["rule"] == ""
        assert response.denied_response.status.code == 403

    def test_400(self) -> None:
        response = to_check_response(Decision("d", BadRequest("malformed_path", "dot-segments")), None)
        assert (response.status.code, response.denied_response.status.code) == (3, 400)
        assert self.body(response)["error"] == "malformed_path"

    def test_503_with_retry_after_is_an_error_response(self) -> None:
        response = to_check_response(deny(Unavailable("gerrit_unavailable", "down")), None, retry_after=7)
        # Envoy >= 1.37 counts it as ext_authz.error; the status must stay non-OK (OK + error_response allows).
        assert response.WhichOneof("http_response") == "error_response"
        assert (response.status.code, response.error_response.status.code) == (14, 503)
        headers = {o.header.key: o.header.value for o in response.error_response.headers}
        assert headers["retry-after"] == "7" and headers["content-type"] == "application/json"
        assert "www-authenticate" not in headers
        assert json.loads(response.error_response.body)["error"] == "gerrit_unavailable"
        assert http_response(response) == response.error_response

    def test_503_as_a_plain_deny_for_older_proxies(self) -> None:
        decision = deny(Unavailable("gerrit_unavailable", "down"))
        response = to_check_response(decision, None, retry_after=7, outages_as_errors=False)
        assert response.WhichOneof("http_response") == "denied_response"
        assert (response.status.code, response.denied_response.status.code) == (14, 503)
        assert denied_headers(response)["retry-after"] == "7"
        assert response.denied_response == to_check_response(decision, None, retry_after=7).error_response

    @pytest.mark.parametrize("outages_as_errors", [True, False])
    def test_definite_denies_are_never_errors(self, outages_as_errors: bool) -> None:
        for error in (Unauthenticated("missing_credentials", "x"), PermissionDenied("x", "y"), BadRequest("x", "y")):
            response = to_check_response(deny(error), None, outages_as_errors=outages_as_errors)
            assert response.WhichOneof("http_response") == "denied_response"

    def test_unexpected_error_family_is_503_never_allow(self) -> None:
        response = to_check_response(deny(AuthzError("internal_error", "boom")), None)
        assert (response.status.code, http_response(response).status.code) == (14, 503)
        assert "retry-after" in {o.header.key for o in http_response(response).headers}

    def test_denied_responses_never_set_identity_headers(self) -> None:
        response = to_check_response(deny(PermissionDenied("requirement_failed", "no")), client_input({}))
        assert not response.HasField("ok_response")
        assert not any(k.startswith("x-gerrit-") for k in denied_headers(response))


class _Context:
    """The little of grpc.aio.ServicerContext that Check uses."""

    def time_remaining(self) -> float | None:
        return None


class TestCredentialsNeverEchoed:
    PASSWORD = "hunter2-very-secret"

    @pytest.mark.parametrize(
        "authorization",
        [
            basic_auth("alice", PASSWORD),
            "Basic " + PASSWORD,  # not even base64
            "basic   " + basic_auth("alice", PASSWORD).split()[1],
        ],
    )
    async def test_refused_credential_not_in_response_or_audit_line(
        self, authorization: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(AUDIT_LOGGER, "propagate", True)
        caplog.set_level(logging.INFO, logger=AUDIT_LOGGER.name)
        facts = FakeFacts(credentials={})  # Gerrit refuses everything
        rules = [{"name": "signed-in", "require": "authenticated"}]
        servicer = AuthorizationServicer(make_authorizer(rules, facts), check_timeout=1.0, retry_after=5)
        request = make_check_request("GET", "/x?token=none", {"authorization": authorization})

        response = await servicer.Check(request, _Context())  # type: ignore[arg-type]

        assert response.denied_response.status.code == 401
        secret = authorization.split()[-1]
        audit_lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER.name]
        assert len(audit_lines) == 1
        record = json.loads(audit_lines[0])
        assert record["http_status"] == 401 and record["code"] == "invalid_credentials"
        for text in (MessageToJson(response), response.SerializeToString().decode("latin-1"), audit_lines[0]):
            assert secret not in text
            assert self.PASSWORD not in text
        assert self.PASSWORD not in caplog.text and secret not in caplog.text
