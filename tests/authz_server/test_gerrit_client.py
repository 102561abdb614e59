"""GerritClient against an ``httpx.MockTransport`` playing Gerrit's REST API.

The transport handler sees exactly what would go on the wire: the URL (``/a/`` prefix, %2F-encoded project names),
the Authorization header (service account vs. the caller's own credentials), cookies and the per-request timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from authz_server._accounts import AccountKey
from authz_server._deadline import Deadline
from authz_server._facts import AccessResult, Account, Group, LabelVotes
from authz_server._gerrit import GerritClient, make_http_client
from authz_server.errors import Unavailable

GERRIT_URL = "https://gerrit.example.org/r/"
SERVICE_USER = "authz-svc"
SERVICE_PASSWORD = "svc-Secret-123"
CONFIG_TIMEOUT = 2.0

Handler = Callable[[httpx.Request], httpx.Response]


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


SERVICE_AUTH = basic(SERVICE_USER, SERVICE_PASSWORD)


def gerrit_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    """A Gerrit JSON answer: XSSI prefix, newline, JSON."""
    return httpx.Response(
        status,
        content=b")]}'\n" + json.dumps(data).encode(),
        headers={"content-type": "application/json; charset=utf-8", **(headers or {})},
    )


def text(status: int, body: str) -> httpx.Response:
    return httpx.Response(status, text=body, headers={"content-type": "text/plain; charset=utf-8"})


class FakeGerrit:
    """Records every request and answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    @property
    def last(self) -> httpx.Request:
        assert self.requests, "no request reached Gerrit"
        return self.requests[-1]


MakeClient = Callable[[Handler], tuple[GerritClient, FakeGerrit]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> tuple[GerritClient, FakeGerrit]:
        fake = FakeGerrit(handler)
        http = make_http_client(transport=httpx.MockTransport(fake))
        clients.append(http)
        return GerritClient(GERRIT_URL, SERVICE_USER, SERVICE_PASSWORD, http, timeout=CONFIG_TIMEOUT), fake

    yield make
    for http in clients:
        await http.aclose()


def budget(seconds: float = 10.0) -> Deadline:
    return Deadline.after(seconds)


ALICE = {"_account_id": 1000001, "name": "Alice", "email": "alice@example.com", "username": "alice"}
ALICE_ACCOUNT = Account(id=1000001, username="alice", email="alice@example.com", name="Alice")
ALICE_EMAIL = AccountKey("email", "alice@example.com")
ALICE_USERNAME = AccountKey("username", "alice")


def alice(request: httpx.Request) -> httpx.Response:
    """Gerrit answering for alice: a query gets a list, anything else her AccountInfo."""
    return gerrit_json([ALICE] if request.url.params.get("q") else ALICE)


# ---------------------------------------------------------------------------------------------------------------
# The wire: /a/ prefix, service-account basic auth, XSSI prefix, path encoding
# ---------------------------------------------------------------------------------------------------------------


async def test_account_lookup_is_a_query_by_the_one_field_as_service_account(make_client: MakeClient) -> None:
    client, fake = make_client(alice)

    fact = await client.account(ALICE_EMAIL, budget())

    assert fact.value == ALICE_ACCOUNT
    assert fact.source == "gerrit"
    request = fake.last
    assert request.method == "GET"
    assert (request.url.scheme, request.url.host, request.url.path) == ("https", "gerrit.example.org", "/r/a/accounts/")
    # Never GET /accounts/{value}: Gerrit's free-form resolver would read "self", ids, "Name <email>", ...
    assert request.url.params.get_list("q") == ['email:"alice@example.com"']
    assert request.headers["authorization"] == SERVICE_AUTH
    assert "cookie" not in request.headers

    await client.account(ALICE_USERNAME, budget())
    assert fake.last.url.params.get_list("q") == ['username:"alice"']


async def test_account_by_id_asks_for_that_id_only(make_client: MakeClient) -> None:
    client, fake = make_client(alice)

    assert (await client.account(AccountKey("account_id", "1000001"), budget())).value == ALICE_ACCOUNT
    assert fake.last.url.raw_path == b"/r/a/accounts/1000001"
    # Gerrit answering with another account (its resolver may fall back to a username) is no account.
    assert (await client.account(AccountKey("account_id", "1000002"), budget())).value is None


@pytest.mark.parametrize(
    ("key", "answer"),
    [
        # Gerrit's email: operator matches prefixes and any case; username: any case.
        pytest.param(AccountKey("email", "alice@example"), [ALICE], id="email-prefix"),
        pytest.param(AccountKey("email", "lice@example.com"), [ALICE], id="email-suffix"),
        pytest.param(AccountKey("username", "ALICE"), [ALICE], id="username-case"),
        pytest.param(AccountKey("username", "alic"), [ALICE], id="username-prefix"),
        pytest.param(AccountKey("email", "alice@example.com"), [ALICE, {**ALICE, "_account_id": 7}], id="two"),
        pytest.param(AccountKey("email", "alice@example.com"), [{**ALICE, "inactive": True}], id="inactive"),
        pytest.param(AccountKey("email", "alice@example.com"), [{**ALICE, "email": "x@example.com"}], id="other"),
    ],
)
async def test_account_must_really_carry_the_value(make_client: MakeClient, key: AccountKey, answer: Any) -> None:
    client, _ = make_client(lambda r: gerrit_json(answer))

    fact = await client.account(key, budget())

    assert fact.value is None


async def test_email_matches_without_regard_to_case(make_client: MakeClient) -> None:
    client, _ = make_client(alice)

    assert (await client.account(AccountKey("email", "Alice@Example.COM"), budget())).value == ALICE_ACCOUNT


async def test_xssi_prefix_is_stripped_with_and_without_newline(make_client: MakeClient) -> None:
    body = json.dumps([ALICE]).encode()
    bodies = iter([b")]}'\n" + body, b")]}'" + body, body])
    client, _ = make_client(lambda r: httpx.Response(200, content=next(bodies)))

    for _ in range(3):
        assert (await client.account(ALICE_USERNAME, budget())).value == ALICE_ACCOUNT


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_a_definite_refusal_is_no_account_not_an_outage(make_client: MakeClient, status: int) -> None:
    client, fake = make_client(lambda r: text(status, "Not found: nobody"))

    fact = await client.account(AccountKey("account_id", "1000009"), budget())

    assert fact.value is None
    assert "Not found: nobody" in fact.detail
    assert fake.last.url.raw_path == b"/r/a/accounts/1000009"


async def test_groups_are_parsed_and_ids_unquoted(make_client: MakeClient) -> None:
    groups = [
        {"id": "global%3ARegistered-Users", "name": "Registered Users"},
        {"id": "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0", "name": "Developers", "owner": "Administrators"},
    ]
    client, fake = make_client(lambda r: gerrit_json(groups))

    fact = await client.groups(1000001, budget())

    assert fact.value == (
        Group(id="global:Registered-Users", name="Registered Users"),
        Group(id="a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0", name="Developers"),
    )
    assert fake.last.url.raw_path == b"/r/a/accounts/1000001/groups"
    assert fake.last.headers["authorization"] == SERVICE_AUTH


async def test_capabilities_keep_only_granted_ones(make_client: MakeClient) -> None:
    caps = {"createProject": True, "viewCaches": False, "queryLimit": {"min": 0, "max": 500}, "flushCaches": True}
    client, fake = make_client(lambda r: gerrit_json(caps))

    fact = await client.capabilities(1000001, budget())

    assert fact.value == frozenset({"createProject", "queryLimit", "flushCaches"})
    assert fake.last.url.raw_path == b"/r/a/accounts/1000001/capabilities"


# ---------------------------------------------------------------------------------------------------------------
# check.access: a denial is HTTP 200 with "status": 403 in the body
# ---------------------------------------------------------------------------------------------------------------


async def test_check_access_allowed_with_project_slash_encoded(make_client: MakeClient) -> None:
    client, fake = make_client(lambda r: gerrit_json({"status": 200}))

    fact = await client.check_access("platform/build/tools", 1000001, "refs/heads/main", "read", budget())

    assert fact.value == AccessResult(allowed=True, message="")
    request = fake.last
    assert request.url.raw_path.split(b"?")[0] == b"/r/a/projects/platform%2Fbuild%2Ftools/check.access"
    assert dict(request.url.params) == {"account": "1000001", "ref": "refs/heads/main", "perm": "read"}
    assert request.headers["authorization"] == SERVICE_AUTH


async def test_check_access_denied_in_body_of_http_200(make_client: MakeClient) -> None:
    message = "user alice (1000001) cannot perform 'push' on ref 'refs/heads/main' of project 'platform/build'"
    client, _ = make_client(lambda r: gerrit_json({"status": 403, "message": message}))

    fact = await client.check_access("platform/build", 1000001, "refs/heads/main", "push", budget())

    assert fact.value.allowed is False
    assert fact.value.message == message


async def test_check_access_unknown_project_is_a_denial(make_client: MakeClient) -> None:
    client, _ = make_client(lambda r: text(404, "Not found: nope/nope"))

    fact = await client.check_access("nope/nope", 1000001, "refs/heads/main", "read", budget())

    assert fact.value.allowed is False
    assert "nope/nope" in fact.value.message


async def test_check_access_body_without_status_is_not_an_allow(make_client: MakeClient) -> None:
    client, _ = make_client(lambda r: gerrit_json({}))

    fact = await client.check_access("p", 1000001, "refs/heads/main", "read", budget())

    assert fact.value.allowed is False


# ---------------------------------------------------------------------------------------------------------------
# Changes: DETAILED_LABELS + SUBMITTABLE
# ---------------------------------------------------------------------------------------------------------------


CHANGE = {
    "id": "platform%2Fbuild~main~I8473b95934b5732ac55d26311a706c9c2bde9940",
    "project": "platform/build",
    "branch": "main",
    "status": "NEW",
    "_number": 4711,
    "submittable": True,
    "labels": {
        "Code-Review": {
            "all": [
                {"value": 2, "_account_id": 1000001},
                {"value": 0, "_account_id": 1000002},
                {"value": -1, "_account_id": 1000003},
                {"_account_id": 1000004},  # a reviewer who never voted: no "value"
            ],
            "values": {"-2": "Do not submit", "-1": "No", " 0": "No score", "+1": "Ok", "+2": "Looks good"},
            "default_value": 0,
        },
        "Verified": {"all": [{"value": 1, "_account_id": 1000099}], "blocking": False},
        "Blocked-Label": {"all": [{"value": -2, "_account_id": 1000002}], "blocking": True, "rejected": {}},
        "Nobody-Voted": {"values": {" 0": "No score", "+1": "Approved"}},
    },
}


async def test_change_with_detailed_labels_and_submittable(make_client: MakeClient) -> None:
    client, fake = make_client(lambda r: gerrit_json(CHANGE))

    fact = await client.change("platform/build~main~I8473b95934b5732ac55d26311a706c9c2bde9940", budget())

    change = fact.value
    assert change is not None
    assert (change.number, change.project, change.branch, change.status) == (4711, "platform/build", "main", "NEW")
    assert change.submittable is True
    assert change.labels == {
        "Code-Review": LabelVotes(max=2, min=-1, blocking=False),
        "Verified": LabelVotes(max=1, min=1, blocking=False),
        "Blocked-Label": LabelVotes(max=-2, min=-2, blocking=True),
        "Nobody-Voted": LabelVotes(max=0, min=0, blocking=False),
    }
    request = fake.last
    assert request.url.raw_path.split(b"?")[0] == (
        b"/r/a/changes/platform%2Fbuild~main~I8473b95934b5732ac55d26311a706c9c2bde9940"
    )
    assert request.url.params.get_list("o") == ["DETAILED_LABELS", "SUBMITTABLE"]
    assert request.headers["authorization"] == SERVICE_AUTH


@pytest.mark.parametrize(("body_value", "expected"), [(True, True), (False, False), (None, None)])
async def test_change_submittable_values(
    make_client: MakeClient, body_value: bool | None, expected: bool | None
) -> None:
    body = {"_number": 1, "project": "p", "branch": "main", "status": "MERGED"}
    if body_value is not None:
        body["submittable"] = body_value
    client, _ = make_client(lambda r: gerrit_json(body))

    change = (await client.change("1", budget())).value

    assert change is not None
    assert change.submittable is expected
    assert change.labels == {}


async def test_change_not_found_is_none(make_client: MakeClient) -> None:
    client, _ = make_client(lambda r: text(404, "Not found: 999"))

    fact = await client.change("999", budget())

    assert fact.value is None
    assert "999" in fact.detail


# ---------------------------------------------------------------------------------------------------------------
# verify_credentials: the caller's own username/password, never the service account
# ---------------------------------------------------------------------------------------------------------------


async def test_verify_credentials_uses_the_callers_credentials(make_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == basic("alice", "alice-http-pw"):
            return gerrit_json(ALICE)
        return text(401, "Unauthorized")

    client, fake = make_client(handler)

    fact = await client.verify_credentials("alice", "alice-http-pw", budget())

    assert fact.value == ALICE_ACCOUNT
    assert fake.last.url.raw_path == b"/r/a/accounts/self"
    assert fake.last.headers["authorization"] == basic("alice", "alice-http-pw")
    assert SERVICE_PASSWORD not in str(fake.last.headers)


@pytest.mark.parametrize("status", [401, 403])
async def test_verify_credentials_refused_is_none(make_client: MakeClient, status: int) -> None:
    client, fake = make_client(lambda r: text(status, "Unauthorized"))

    fact = await client.verify_credentials("alice", "wrong", budget())

    assert fact.value is None
    assert "wrong" not in fact.detail
    assert fake.last.headers["authorization"] == basic("alice", "wrong")


async def test_service_account_is_used_again_after_verifying_a_caller(make_client: MakeClient) -> None:
    client, fake = make_client(alice)

    await client.verify_credentials("alice", "alice-http-pw", budget())
    await client.account(ALICE_USERNAME, budget())

    assert [r.headers["authorization"] for r in fake.requests] == [basic("alice", "alice-http-pw"), SERVICE_AUTH]


async def test_set_cookie_from_gerrit_is_never_sent_back(make_client: MakeClient) -> None:
    cookie = "GerritAccount=aSceprt7Jmx0AMJ3E8ymL4AfRdSiL; Path=/; Domain=gerrit.example.org; Secure; HttpOnly"

    def handler(request: httpx.Request) -> httpx.Response:
        body: Any = [] if request.url.path.endswith(("/groups", "/accounts/")) else ALICE
        return gerrit_json(body, headers={"set-cookie": cookie})

    client, fake = make_client(handler)

    # A caller's login could hand out a session cookie; it must not ride along on anybody else's request.
    await client.verify_credentials("alice", "alice-http-pw", budget())
    await client.account(AccountKey("username", "bob"), budget())
    await client.groups(1000001, budget())
    await client.verify_credentials("mallory", "guess", budget())

    assert len(fake.requests) == 4
    for request in fake.requests:
        assert "cookie" not in request.headers
    assert fake.requests[-1].headers["authorization"] == basic("mallory", "guess")


# ---------------------------------------------------------------------------------------------------------------
# Failures: every one is an Unavailable with a stable code (never an allow, never a crash)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadTimeout, "gerrit_timeout"),
        (httpx.ConnectTimeout, "gerrit_timeout"),
        (httpx.PoolTimeout, "gerrit_timeout"),
        (httpx.ConnectError, "gerrit_unavailable"),
        (httpx.RemoteProtocolError, "gerrit_unavailable"),
        (httpx.ReadError, "gerrit_unavailable"),
    ],
)
async def test_transport_failures_are_unavailable(
    make_client: MakeClient, exc: type[httpx.TransportError], code: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    client, fake = make_client(handler)

    with pytest.raises(Unavailable) as info:
        await client.account(ALICE_USERNAME, budget())

    assert info.value.code == code
    assert info.value.family == "unavailable"
    assert len(fake.requests) == 1


async def test_failures_never_echo_credentials(make_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    client, _ = make_client(handler)

    with pytest.raises(Unavailable) as info:
        await client.verify_credentials("alice", "alice-http-pw", budget())

    rendered = f"{info.value} {info.value.reason} {info.value.detail}"
    assert "alice-http-pw" not in rendered
    assert SERVICE_PASSWORD not in rendered


async def test_server_error_keeps_gerrit_text_as_detail(make_client: MakeClient) -> None:
    client, _ = make_client(lambda r: text(500, "Internal server error: cannot open NoteDb for change 4711\n"))

    with pytest.raises(Unavailable) as info:
        await client.change("4711", budget())

    assert info.value.code == "gerrit_error"
    assert "cannot open NoteDb for change 4711" in info.value.detail
    assert "500" in info.value.reason


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_5xx_and_429_are_transient_outages(make_client: MakeClient, status: int) -> None:
    client, _ = make_client(lambda r: text(status, "try later"))

    with pytest.raises(Unavailable) as info:
        await client.check_access("p", 1000001, "refs/heads/main", "read", budget())

    assert (info.value.code, info.value.transient) == ("gerrit_error", True)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_a_definite_4xx_is_a_negative_answer(make_client: MakeClient, status: int) -> None:
    client, _ = make_client(lambda r: text(status, "bad request: invalid ref"))

    access = await client.check_access("p", 1000001, "refs/heads/main", "read", budget())
    assert access.value.allowed is False
    assert (await client.groups(1000001, budget())).value == ()
    assert (await client.capabilities(1000001, budget())).value == frozenset()
    assert (await client.change("4711", budget())).value is None


async def test_non_json_body_is_gerrit_error(make_client: MakeClient) -> None:
    client, _ = make_client(lambda r: httpx.Response(200, text="<html>login page</html>"))

    with pytest.raises(Unavailable) as info:
        await client.account(ALICE_USERNAME, budget())

    assert info.value.code == "gerrit_error"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "lookup",
    [
        pytest.param(lambda c, d: c.account(ALICE_USERNAME, d), id="account"),
        pytest.param(lambda c, d: c.groups(1000001, d), id="groups"),
        pytest.param(lambda c, d: c.check_access("p", 1000001, "refs/heads/main", "read", d), id="access"),
        pytest.param(lambda c, d: c.capabilities(1000001, d), id="capabilities"),
        pytest.param(lambda c, d: c.change("4711", d), id="change"),
    ],
)
async def test_service_account_refused_is_auth_failed(make_client: MakeClient, status: int, lookup: Any) -> None:
    client, _ = make_client(lambda r: text(status, "Unauthorized" if status == 401 else "view access not permitted"))

    with pytest.raises(Unavailable) as info:
        await lookup(client, budget())

    assert info.value.code == "gerrit_auth_failed"
    assert str(status) in info.value.reason
    assert SERVICE_PASSWORD not in f"{info.value.reason} {info.value.detail}"


# ---------------------------------------------------------------------------------------------------------------
# Deadlines: every call bounded by the Check's remaining budget
# ---------------------------------------------------------------------------------------------------------------


async def test_spent_deadline_makes_no_request(make_client: MakeClient) -> None:
    client, fake = make_client(alice)

    with pytest.raises(Unavailable) as info:
        await client.account(ALICE_USERNAME, Deadline(time.monotonic() - 0.001))

    assert info.value.code == "deadline_exceeded"
    assert fake.requests == []


async def test_timeout_is_the_config_timeout_when_the_budget_is_larger(make_client: MakeClient) -> None:
    client, fake = make_client(alice)

    await client.account(ALICE_USERNAME, budget(30.0))

    timeout = fake.last.extensions["timeout"]
    assert set(timeout) == {"connect", "read", "write", "pool"}
    assert all(value == CONFIG_TIMEOUT for value in timeout.values())


async def test_timeout_is_the_remaining_budget_when_that_is_smaller(make_client: MakeClient) -> None:
    client, fake = make_client(lambda r: gerrit_json({"status": 200}))

    started = time.monotonic()
    await client.check_access("p", 1000001, "refs/heads/main", "read", Deadline(started + 0.5))

    timeout = fake.last.extensions["timeout"]
    assert set(timeout) == {"connect", "read", "write", "pool"}
    for value in timeout.values():
        assert 0 < value <= 0.5
        assert value >= 0.5 - (time.monotonic() - started) - 0.001


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (lambda c: c.account(ALICE_USERNAME, budget()), [{"name": "no id"}]),
        (lambda c: c.groups(1, budget()), {"not": "a list"}),
        (lambda c: c.capabilities(1, budget()), ["not", "a", "map"]),
        (lambda c: c.change("1", budget()), {"labels": {}}),
    ],
)
async def test_unexpected_json_shape_is_unavailable_not_a_crash(make_client: MakeClient, call: Any, body: Any) -> None:
    client, _ = make_client(lambda r: gerrit_json(body))
    with pytest.raises(Unavailable) as err:
        await call(client)
    assert err.value.code == "gerrit_error"


# ---------------------------------------------------------------------------------------------------------------
# A real, trickling Gerrit: the whole call is bounded, not each read
# ---------------------------------------------------------------------------------------------------------------


async def test_a_trickling_gerrit_is_cut_off_at_the_budget_not_per_read() -> None:
    """A real loopback server that sends headers at once, then one body byte every 0.2 s: httpx's read timeout
    (0.5 s here) never fires, so only the total bound ends the call."""
    sent = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n")
        try:
            for _ in range(1000):
                writer.write(b" ")
                await writer.drain()
                sent.set()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with make_http_client() as http:
        client = GerritClient(f"http://127.0.0.1:{port}/", SERVICE_USER, SERVICE_PASSWORD, http, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await client.groups(1000001, budget(1.0))
        elapsed = time.monotonic() - started
    server.close()
    await server.wait_closed()

    assert sent.is_set()  # the body really was trickling
    assert (info.value.code, info.value.transient) == ("gerrit_timeout", True)
    assert elapsed < 1.0  # the config timeout (0.5 s) bounded the whole call, not each byte
