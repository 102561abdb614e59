"""Factories shared by the unit tests: real Envoy ``CheckRequest`` messages, an in-memory :class:`GerritFacts`,
and small helpers that wire an :class:`~authz_server._engine.Authorizer` from YAML-shaped rules.

Everything here builds the real objects the service uses (protobuf messages, config models, the real
``IdentityResolver`` and ``BasicCredentialsSource``); only Gerrit itself is replaced, by :class:`FakeFacts`.

Typical use::

    facts = FakeFacts(credentials={("alice", "pw"): ALICE}, groups={ALICE.id: [RELEASE_MANAGERS]})
    authorizer = make_authorizer([{"name": "r", "require": {"group": "release-managers"}}], facts)
    inp = make_input("GET", "/x", {"authorization": basic_auth("alice", "pw")})
    decision = await authorizer.decide(inp, Deadline.after(5))
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.struct_pb2 import Struct

from authz_server._accounts import AccountField, AccountKey, account_key
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer
from authz_server._facts import AccessResult, Account, ChangeInfo, Fact, Group, LabelVotes, Source
from authz_server._identity import BasicCredentialsSource, IdentityResolver, IdentitySource, Principal
from authz_server._input import CheckInput, parse_check_request
from authz_server._policy import Policy
from authz_server.config import EventsConfig, RuleConfig
from authz_server.errors import AuthzError

__all__ = [
    "FakeFacts",
    "StaticTokenSource",
    "basic_auth",
    "make_authorizer",
    "make_change",
    "make_check_request",
    "make_events_config",
    "make_input",
    "make_rules",
]

Hook = Callable[[str, tuple[Any, ...]], Awaitable[None]]


def make_check_request(
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    *,
    host: str = "gerrit-authz.test",
    scheme: str = "https",
    header_map: Sequence[tuple[str, str | bytes]] | None = None,
    source_address: str = "",
    source_principal: str = "",
    context_extensions: Mapping[str, str] | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    request_id: str = "",
    http: bool = True,
) -> CheckRequest:
    """A ``CheckRequest`` as Envoy sends it.

    ``path`` may carry a query (``/a?b=c``), as in Envoy's ``:path``. ``header_map`` (a list of ``(name, value)``
    pairs, repeats allowed) is sent instead of ``headers`` the way Envoy does with raw headers: ``str`` values go
    to ``value``, ``bytes`` values to ``raw_value``. ``metadata`` maps a filter name to a JSON-like dict
    (``metadata_context.filter_metadata``). ``http=False`` leaves ``attributes.request.http`` unset.
    """
    attributes = AttributeContext(context_extensions=dict(context_extensions or {}))
    if http:
        request = AttributeContext.HttpRequest(
            method=method, path=path, host=host, scheme=scheme, headers=dict(headers or {}), id=request_id
        )
        if header_map is not None:
            for key, value in header_map:
                if isinstance(value, bytes):
                    request.header_map.headers.append(HeaderValue(key=key, raw_value=value))
                else:
                    request.header_map.headers.append(HeaderValue(key=key, value=value))
        attributes.request.http.CopyFrom(request)
    if source_address or source_principal:
        peer = AttributeContext.Peer(principal=source_principal)
        if source_address:
            peer.address.CopyFrom(Address(socket_address=SocketAddress(address=source_address, port_value=40000)))
        attributes.source.CopyFrom(peer)
    for name, fields in (metadata or {}).items():
        struct = Struct()
        struct.update(dict(fields))
        attributes.metadata_context.filter_metadata[name].CopyFrom(struct)
    return CheckRequest(attributes=attributes)


def make_input(
    method: str = "GET", path: str = "/", headers: Mapping[str, str] | None = None, **kwargs: Any
) -> CheckInput:
    """A :class:`CheckInput` parsed from :func:`make_check_request` (same arguments)."""
    return parse_check_request(make_check_request(method, path, headers, **kwargs))


def basic_auth(username: str, password: str) -> str:
    """An ``authorization`` header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def make_change(
    number: int = 1,
    *,
    status: str = "NEW",
    labels: Mapping[str, LabelVotes] | None = None,
    submittable: bool | None = None,
    project: str = "platform/build",
    branch: str = "main",
) -> ChangeInfo:
    return ChangeInfo(number, project, branch, status, dict(labels or {}), submittable)


class FakeFacts:
    """:class:`~authz_server._facts.GerritFacts` served from in-memory dicts; records every call.

    - ``accounts``: account key value (email, username, id) → :class:`Account`; unknown → ``None``.
    - ``credentials``: ``(username, password)`` → :class:`Account`; unknown → ``None`` (Gerrit refused).
    - ``groups``: account id → groups; ``capabilities``: account id → capability names.
    - ``access``: ``(project, account_id, ref, perm)`` → ``bool`` or :class:`AccessResult`; unknown → denied.
    - ``changes``: change id (as written in the path) → :class:`ChangeInfo`; unknown → ``None``.
    - ``errors``: method name → :class:`AuthzError` raised by that method (e.g. ``Unavailable``).
    - ``hook``: awaited at the start of every call with ``(method, args)``; tests use it to block or to prove
      concurrency. ``max_in_flight`` is the most calls that were running at once.
    """

    def __init__(
        self,
        *,
        accounts: Mapping[str, Account] | None = None,
        credentials: Mapping[tuple[str, str], Account] | None = None,
        groups: Mapping[int, Iterable[Group]] | None = None,
        capabilities: Mapping[int, Iterable[str]] | None = None,
        access: Mapping[tuple[str, int, str, str], bool | AccessResult] | None = None,
        changes: Mapping[str, ChangeInfo] | None = None,
        errors: Mapping[str, AuthzError] | None = None,
        source: Source = "gerrit",
    ) -> None:
        self.accounts = dict(accounts or {})
        self.credentials = dict(credentials or {})
        self.group_map = {k: tuple(v) for k, v in (groups or {}).items()}
        self.capability_map = {k: frozenset(v) for k, v in (capabilities or {}).items()}
        self.access = dict(access or {})
        self.changes = dict(changes or {})
        self.errors = dict(errors or {})
        self.source: Source = source
        self.hook: Hook | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def count(self, method: str | None = None) -> int:
        """How many calls were made (to ``method``, or in total)."""
        return len(self.calls) if method is None else sum(1 for name, _ in self.calls if name == method)

    async def _enter(self, method: str, args: tuple[Any, ...]) -> None:
        self.calls.append((method, args))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hook is not None:
                await self.hook(method, args)
            if method in self.errors:
                raise self.errors[method]
        except BaseException:
            self.in_flight -= 1
            raise

    def _exit(self) -> None:
        self.in_flight -= 1

    async def account(self, key: AccountKey, deadline: Deadline) -> Fact[Account | None]:
        await self._enter("account", (key.value,))
        self._exit()
        return Fact(self.accounts.get(key.value), self.source)

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        await self._enter("verify_credentials", (username,))  # never record the password
        self._exit()
        return Fact(self.credentials.get((username, password)), self.source)

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        await self._enter("groups", (account_id,))
        self._exit()
        return Fact(self.group_map.get(account_id, ()), self.source)

    async def check_access(
        self, project: str, account_id: int, ref: str, perm: str, deadline: Deadline
    ) -> Fact[AccessResult]:
        await self._enter("check_access", (project, account_id, ref, perm))
        self._exit()
        answer = self.access.get((project, account_id, ref, perm), False)
        return Fact(answer if isinstance(answer, AccessResult) else AccessResult(answer), self.source)

    async def capabilities(self, account_id: int, deadline: Deadline) -> Fact[frozenset[str]]:
        await self._enter("capabilities", (account_id,))
        self._exit()
        return Fact(self.capability_map.get(account_id, frozenset()), self.source)

    async def change(self, change_id: str, deadline: Deadline) -> Fact[ChangeInfo | None]:
        await self._enter("change", (change_id,))
        self._exit()
        return Fact(self.changes.get(change_id), self.source)


class StaticTokenSource:
    """An :class:`IdentitySource` for tests: ``authorization: Test <subject>`` proves ``subject`` and looks it up
    as a Gerrit account (like a verified JWT whose account claim is ``subject``)."""

    name = "test_token"

    def present(self, inp: CheckInput) -> bool:
        return inp.headers.get("authorization", "").startswith("Test ")

    async def authenticate(self, inp: CheckInput, deadline: Deadline) -> Principal:
        subject = inp.headers["authorization"].removeprefix("Test ").strip()
        field: AccountField = "email" if "@" in subject else "username"
        return Principal(source=self.name, subject=subject, account_key=account_key(field, subject))


def make_rules(rules: Sequence[Mapping[str, Any]]) -> Policy:
    """A :class:`Policy` from YAML-shaped rule mappings (validated by the real config models)."""
    return Policy.from_config([RuleConfig.model_validate(dict(r)) for r in rules])


def make_authorizer(
    rules: Sequence[Mapping[str, Any]],
    facts: FakeFacts,
    sources: Sequence[IdentitySource] | None = None,
) -> Authorizer:
    """An :class:`Authorizer` over ``facts``; identity sources default to a :class:`StaticTokenSource` then
    Gerrit HTTP credentials (Basic) checked against ``facts``."""
    if sources is None:
        sources = [StaticTokenSource(), BasicCredentialsSource(facts)]
    return Authorizer(make_rules(rules), IdentityResolver(sources, facts), facts)


def make_events_config(directory: Path) -> EventsConfig:
    """An :class:`EventsConfig` for ``ssh://bot@127.0.0.1:29418`` with a fresh key and a known_hosts file (under
    ``directory``) that trusts some other key: nothing connects, the property tests only need a valid config."""
    import asyncssh

    key = directory / "key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    hosts = directory / "known_hosts"
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    hosts.write_text("[127.0.0.1]:29418 " + " ".join(public.split()[:2]) + "\n")
    return EventsConfig.model_validate(
        {"ssh_url": "ssh://bot@127.0.0.1:29418", "private_key_file": key, "known_hosts_file": hosts}
    )
