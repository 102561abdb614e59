"""Decision → ``CheckResponse``: a pure function, exactly the contract's table.

Allowed: identity headers are set with OVERWRITE_IF_EXISTS_OR_ADD; every other client-sent ``x-gerrit-*`` /
``x-authz-*`` header, in any case and with ``_`` for ``-``, and every unset name of the fixed identity set, goes to
``headers_to_remove`` (never one that is also set: Envoy may apply removals last).
Denied: a JSON body, ``www-authenticate`` on 401 and ``retry-after`` on 503.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status as RpcStatus

from ._engine import Decision
from ._input import CheckInput
from .checkrequest import IDENTITY_HEADERS, is_identity_header
from .errors import Unauthenticated, status_for

__all__ = ["allowed_headers", "denied_body", "denied_headers", "to_check_response"]

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def allowed_headers(decision: Decision) -> dict[str, str]:
    """Headers set on the upstream request for an allowed decision."""
    headers = {"x-authz-rule": decision.rule, "x-authz-decision-id": decision.decision_id}
    if decision.error is not None:  # a shadowed deny: tell the upstream what enforcing would have answered
        headers["x-authz-shadow"] = decision.error.code
    account = decision.identity.account
    if account is not None:
        headers["x-gerrit-account-id"] = str(account.id)
        if account.username:
            headers["x-gerrit-username"] = account.username
        if account.email:
            headers["x-gerrit-email"] = account.email
    return headers


def denied_body(decision: Decision) -> str:
    assert decision.error is not None
    return json.dumps(
        {
            "error": decision.error.code,
            "reason": decision.error.reason,
            "rule": decision.rule,
            "decision_id": decision.decision_id,
        },
        separators=(",", ":"),
    )


def denied_headers(decision: Decision, *, realm: str = "gerrit-authz", retry_after: int = 5) -> dict[str, str]:
    """Headers sent to the client with a denied response."""
    error = decision.error
    headers = {"content-type": "application/json", "x-authz-decision-id": decision.decision_id}
    if isinstance(error, Unauthenticated):
        challenge = f'Bearer realm="{realm}"'
        if error.code in ("invalid_token", "invalid_credentials"):
            challenge += ', error="invalid_token"'
        headers["www-authenticate"] = challenge
    elif status_for(error).http == 503:
        headers["retry-after"] = str(retry_after)
    return headers


def _options(headers: Mapping[str, str]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_OVERWRITE) for k, v in headers.items()]


def _add_options(field: Any, headers: Mapping[str, str]) -> None:
    """The same options as :func:`_options`, added in place to a repeated field (no message copies: hot path)."""
    add = field.add
    for key, value in headers.items():
        header = add(append_action=_OVERWRITE).header
        header.key = key
        header.value = value


def to_check_response(decision: Decision, inp: CheckInput | None, *, retry_after: int = 5) -> CheckResponse:
    """The CheckResponse Envoy acts on."""
    if decision.allowed:
        status = status_for(None)
        headers = allowed_headers(decision)
        remove = _headers_to_remove(inp, headers)
        account = decision.identity.account
        metadata = Struct()
        fields = metadata.fields  # set directly: Struct.update() type-dispatches every value (hot path)
        fields["account_id"].string_value = str(account.id) if account else ""
        fields["username"].string_value = account.username if account else ""
        fields["rule"].string_value = decision.rule
        fields["decision_id"].string_value = decision.decision_id
        response = CheckResponse(
            status=RpcStatus(code=status.grpc.value[0]),
            ok_response=OkHttpResponse(headers_to_remove=remove),
            dynamic_metadata=metadata,
        )
        _add_options(response.ok_response.headers, headers)
        return response
    assert decision.error is not None
    status = status_for(decision.error)
    return CheckResponse(
        status=RpcStatus(code=status.grpc.value[0], message=decision.error.code),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=status.http),
            headers=_options(denied_headers(decision, retry_after=retry_after)),
            body=denied_body(decision),
        ),
        dynamic_metadata=_deny_metadata(decision),
    )


def _headers_to_remove(inp: CheckInput | None, headers: Mapping[str, str]) -> list[str]:
    """Every client-sent identity header in any spelling, and the fixed identity set, unless set by name.

    A client's ``x_gerrit_account_id`` is another wire name than the ``x-gerrit-account-id`` set here, so it is
    removed (a WSGI server would read both as ``HTTP_X_GERRIT_ACCOUNT_ID``). Names in ``inp.headers`` are
    lower-cased already, as Envoy matches removals.
    """
    remove = [h for h in IDENTITY_HEADERS if h not in headers]
    if inp is not None:
        # Hot path: most names do not start with "x"; inp.headers names are lower-cased already.
        remove.extend(
            h
            for h in inp.headers
            if h[:1] == "x" and h not in headers and is_identity_header(h) and h not in IDENTITY_HEADERS
        )
    return remove


def _deny_metadata(decision: Decision) -> Struct:
    metadata = Struct()
    account = decision.identity.account
    metadata.update(
        {
            "account_id": str(account.id) if account else "",
            "rule": decision.rule,
            "decision_id": decision.decision_id,
            "error": decision.error.code if decision.error else "",
        }
    )
    return metadata
