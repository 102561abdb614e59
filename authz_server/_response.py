"""Decision → ``CheckResponse``: a pure function, exactly the contract's table.

Allowed: identity headers are set with OVERWRITE_IF_EXISTS_OR_ADD; every other client-sent ``x-gerrit-*`` /
``x-authz-*`` header, in any case and with ``_`` for ``-``, and every unset name of the fixed identity set, goes to
``headers_to_remove`` (never one that is also set: Envoy may apply removals last).
Denied: a JSON body, ``www-authenticate`` on 401 (one challenge per configured credential kind, each its own
header line, so browsers, curl and git find the one they can answer) and ``retry-after`` on 503.
Undecided (503): the same denied answer, sent as ``error_response`` unless ``outages_as_errors`` is off (see
:func:`http_response`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Protocol

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status as RpcStatus

from ._engine import Decision
from ._facts import Account
from ._input import CheckInput
from .checkrequest import IDENTITY_HEADERS, is_identity_header
from .errors import Unauthenticated, status_for

__all__ = [
    "allowed_headers",
    "allowed_response",
    "challenge_schemes",
    "denied_body",
    "denied_header_lines",
    "denied_headers",
    "http_response",
    "to_check_response",
]

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = HeaderValueOption.HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
REALM = "gerrit-authz"


class _IdentityEntry(Protocol):
    """One ``identity:`` entry of the configuration (``config.IdentitySource``)."""

    @property
    def gerrit_http_credentials(self) -> object | None: ...
    @property
    def mtls(self) -> object | None: ...


def challenge_schemes(identity: Iterable[_IdentityEntry]) -> tuple[str, ...]:
    """The ``www-authenticate`` schemes a 401 offers, in the order of the configured sources.

    ``gerrit_http_credentials`` is answered with Basic, the token sources (``jwt``, ``envoy_jwt_metadata``) with
    Bearer; a client certificate cannot be asked for in HTTP, so ``mtls`` adds none. A configuration offering no
    challengeable kind still answers Bearer (RFC 9110 wants a challenge on every 401).
    """
    schemes = [
        "Basic" if entry.gerrit_http_credentials is not None else "Bearer" for entry in identity if entry.mtls is None
    ]
    return tuple(dict.fromkeys(schemes)) or ("Bearer",)


def allowed_headers(decision: Decision) -> dict[str, str]:
    """Headers set on the upstream request for an allowed decision."""
    return _set_headers(decision.decision_id, decision.rule, _shadow_code(decision), decision.identity.account)


def _shadow_code(decision: Decision) -> str | None:
    return decision.error.code if decision.error is not None else None


def _set_headers(decision_id: str, rule: str, shadow: str | None, account: Account | None) -> dict[str, str]:
    headers = {"x-authz-rule": rule, "x-authz-decision-id": decision_id}
    if shadow is not None:  # a shadowed deny: tell the upstream what enforcing would have answered
        headers["x-authz-shadow"] = shadow
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


def denied_header_lines(decision: Decision, *, realm: str = REALM, retry_after: int = 5) -> list[tuple[str, str]]:
    """Header lines sent to the client with a denied response; a 401 has one ``www-authenticate`` per scheme."""
    error = decision.error
    lines = [("content-type", "application/json"), ("x-authz-decision-id", decision.decision_id)]
    if isinstance(error, Unauthenticated):
        for scheme in decision.challenges:
            challenge = f'{scheme} realm="{realm}"'
            if scheme == "Bearer" and error.code == "invalid_token":  # RFC 6750 3.1: only about a bad token
                challenge += ', error="invalid_token"'
            lines.append(("www-authenticate", challenge))
    elif status_for(error).http == 503:
        lines.append(("retry-after", str(retry_after)))
    return lines


def denied_headers(decision: Decision, *, realm: str = REALM, retry_after: int = 5) -> dict[str, str]:
    """:func:`denied_header_lines` as a mapping; repeated headers joined with ``, `` (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for key, value in denied_header_lines(decision, realm=realm, retry_after=retry_after):
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _options(headers: Mapping[str, str]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_OVERWRITE) for k, v in headers.items()]


def _denied_options(lines: Sequence[tuple[str, str]]) -> list[HeaderValueOption]:
    """The first line of a name replaces, the next ones append: Envoy sends each as its own header line."""
    seen: set[str] = set()
    options = []
    for key, value in lines:
        action = _APPEND if key in seen else _OVERWRITE
        seen.add(key)
        options.append(HeaderValueOption(header=HeaderValue(key=key, value=value), append_action=action))
    return options


def http_response(response: CheckResponse) -> DeniedHttpResponse:
    """The HTTP answer of a refused CheckResponse, whether it went as ``denied_response`` or ``error_response``."""
    return response.error_response if response.HasField("error_response") else response.denied_response


def to_check_response(
    decision: Decision, inp: CheckInput | None, *, retry_after: int = 5, outages_as_errors: bool = True
) -> CheckResponse:
    """The CheckResponse Envoy acts on.

    An undecided answer (503) goes as ``error_response`` when ``outages_as_errors``: Envoy >= 1.37 then counts it
    in ``ext_authz.error``, applies ``failure_mode_allow`` and sends our status, headers and body (measured with
    1.40); older proxies ignore that field and answer a bare 403 (measured with 1.36), so ``server.outages: deny``
    keeps the 503 in ``denied_response`` for them. The gRPC status stays UNAVAILABLE either way: an
    ``error_response`` with status OK is an allow to Envoy.
    """
    if decision.allowed:
        account, shadow, client_sent = decision.identity.account, _shadow_code(decision), _client_identity_headers(inp)
        if client_sent:  # names the client chose: never kept (they could fill the table with large entries)
            return allowed_response(decision.decision_id, decision.rule, shadow, account, client_sent)
        template, id_option = _allowed_template(decision.rule, shadow, account)
        response = CheckResponse()
        response.CopyFrom(template)  # one C copy of the cached message; the id is the only per-Check part
        response.ok_response.headers[id_option].header.value = decision.decision_id
        response.dynamic_metadata.fields["decision_id"].string_value = decision.decision_id
        return response
    assert decision.error is not None
    status = status_for(decision.error)
    denied = DeniedHttpResponse(
        status=HttpStatus(code=status.http),
        headers=_denied_options(denied_header_lines(decision, retry_after=retry_after)),
        body=denied_body(decision),
    )
    rpc_status = RpcStatus(code=status.grpc.value[0], message=decision.error.code)
    if outages_as_errors and status.http == 503:
        return CheckResponse(status=rpc_status, error_response=denied, dynamic_metadata=_deny_metadata(decision))
    return CheckResponse(status=rpc_status, denied_response=denied, dynamic_metadata=_deny_metadata(decision))


def _client_identity_headers(inp: CheckInput | None) -> tuple[str, ...]:
    """Client-sent names that read as identity headers (any case, ``_`` for ``-``) but are not one of the fixed
    set's spellings. Names in ``inp.headers`` are lower-cased already, as Envoy matches removals."""
    if inp is None:
        return ()
    # Hot path: a lower-cased name reads as an identity header only if it starts with one of _SPELLED.
    return tuple(
        h for h in inp.headers if h.startswith(_SPELLED) and is_identity_header(h) and h not in IDENTITY_HEADERS
    )


#: Every lower-cased name :func:`is_identity_header` accepts starts with one of these (a cheap test first).
_SPELLED = ("x-gerrit", "x_gerrit", "x-authz", "x_authz")


def _headers_to_remove(headers: Mapping[str, str], client_sent: Sequence[str]) -> list[str]:
    """Every client-sent identity header in any spelling, and the fixed identity set, unless set by name.

    A client's ``x_gerrit_account_id`` is another wire name than the ``x-gerrit-account-id`` set here, so it is
    removed (a WSGI server would read both as ``HTTP_X_GERRIT_ACCOUNT_ID``).
    """
    remove = [h for h in IDENTITY_HEADERS if h not in headers]
    remove.extend(h for h in client_sent if h not in headers)
    return remove


def allowed_response(
    decision_id: str, rule: str, shadow: str | None, account: Account | None, client_sent: Sequence[str]
) -> CheckResponse:
    """The CheckResponse of an allow: ``shadow`` is the code of a shadowed deny, ``client_sent`` the client's own
    identity-header spellings (:func:`_client_identity_headers`). Everything it reads is in its arguments."""
    headers = _set_headers(decision_id, rule, shadow, account)
    metadata = Struct()
    fields = metadata.fields  # set directly: Struct.update() type-dispatches every value
    fields["account_id"].string_value = str(account.id) if account else ""
    fields["username"].string_value = account.username if account else ""
    fields["rule"].string_value = rule
    fields["decision_id"].string_value = decision_id
    return CheckResponse(
        status=RpcStatus(code=status_for(None).grpc.value[0]),
        ok_response=OkHttpResponse(
            headers=_options(headers), headers_to_remove=_headers_to_remove(headers, client_sent)
        ),
        dynamic_metadata=metadata,
    )


@lru_cache(maxsize=4096)
def _allowed_template(rule: str, shadow: str | None, account: Account | None) -> tuple[CheckResponse, int]:
    """:func:`allowed_response` without its decision id and with no client-sent identity header, and where its
    ``x-authz-decision-id`` option is; kept: a warm allow repeats the same few responses, and building one from
    Python is most of what rendering costs. Keyed by every argument, so it is exact; bounded (rules x accounts),
    never handed out, only copied."""
    template = allowed_response("", rule, shadow, account, ())
    keys = [option.header.key for option in template.ok_response.headers]
    return template, keys.index("x-authz-decision-id")


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
