from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainRequest(_message.Message):
    __slots__ = ("check_request", "method", "path", "host", "headers", "source_address", "context_extensions")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ContextExtensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHECK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    check_request: bytes
    method: str
    path: str
    host: str
    headers: _containers.ScalarMap[str, str]
    source_address: str
    context_extensions: _containers.ScalarMap[str, str]
    def __init__(self, check_request: _Optional[bytes] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., host: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., source_address: _Optional[str] = ..., context_extensions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("authenticated", "source", "subject", "account_id", "username", "email")
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    authenticated: bool
    source: str
    subject: str
    account_id: int
    username: str
    email: str
    def __init__(self, authenticated: _Optional[bool] = ..., source: _Optional[str] = ..., subject: _Optional[str] = ..., account_id: _Optional[int] = ..., username: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class RequirementTrace(_message.Message):
    __slots__ = ("kind", "target", "result", "source", "detail", "depth")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    kind: str
    target: str
    result: str
    source: str
    detail: str
    depth: int
    def __init__(self, kind: _Optional[str] = ..., target: _Optional[str] = ..., result: _Optional[str] = ..., source: _Optional[str] = ..., detail: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("decision_id", "allowed", "code", "reason", "rule", "identity", "requirements", "http_status", "headers", "body", "check_response", "memo")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CHECK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    allowed: bool
    code: str
    reason: str
    rule: str
    identity: Identity
    requirements: _containers.RepeatedCompositeFieldContainer[RequirementTrace]
    http_status: int
    headers: _containers.ScalarMap[str, str]
    body: str
    check_response: bytes
    memo: bool
    def __init__(self, decision_id: _Optional[str] = ..., allowed: _Optional[bool] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., rule: _Optional[str] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., requirements: _Optional[_Iterable[_Union[RequirementTrace, _Mapping]]] = ..., http_status: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., body: _Optional[str] = ..., check_response: _Optional[bytes] = ..., memo: _Optional[bool] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("account", "project", "group", "change", "all")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    account: str
    project: str
    group: str
    change: str
    all: bool
    def __init__(self, account: _Optional[str] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., change: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...
