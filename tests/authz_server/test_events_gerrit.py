"""gerrit.events against the real Gerrit: its `stream-events` over its real sshd, as the service account.

Every TTL is 10 minutes, so only an event (or the reconnect's clear) can explain a decision changing. Each test
changes Gerrit under a cached answer and polls the decision, bounded at 10 s; the observed delays are printed
(run with `-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest
import pytest_asyncio
from _support.authz import basic, check_request, check_stub, make_config, running_server
from _support.gerrit_events import EventsSetup, close_connections
from _support.gerrit_provision import Rest
from gerrit_authz.v1 import admin_pb2, admin_pb2_grpc

from authz_server._events import SETTLE
from authz_server._response import http_response
from authz_server._server import AuthzServer

pytestmark = pytest.mark.gerrit

LONG = {"account": "10m", "groups": "10m", "access": "10m", "capabilities": "10m", "change": "10m"}
POLL_S = 10.0
DELAYS: dict[str, float] = {}


def _q(name: str) -> str:
    return name.replace("/", "%2F")


def rules(group: str) -> list[dict[str, Any]]:
    return [
        {"name": "group", "match": {"path": "/group"}, "require": {"group": group}},
        {
            "name": "read",
            "match": {"path": "/src/{project}/-/{branch}"},
            "require": {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}},
        },
        {
            "name": "voted",
            "match": {"path": "/voted/{change}"},
            "require": {"change": {"id": "{change}", "labels": {"Code-Review": 1}}},
        },
        {
            "name": "merged",
            "match": {"path": "/merged/{change}"},
            "require": {"change": {"id": "{change}", "status": "MERGED"}},
        },
        {
            "name": "open",
            "match": {"path": "/open/{change}"},
            "require": {"change": {"id": "{change}", "status": "NEW"}},
        },
        {
            "name": "submittable",
            "match": {"path": "/submittable/{change}"},
            "require": {"change": {"id": "{change}", "submittable": True}},
        },
    ]


@pytest.fixture(scope="module")
def group(rest: Rest) -> str:
    """A group of its own with carol in it (the shared demo groups stay as they are)."""
    return str(rest.put(f"groups/events-{uuid.uuid4().hex[:8]}", {"members": ["carol"]})["id"])


def config_for(gerrit: Any, password_file: Path, group: str, events: dict[str, Any]) -> Any:
    return make_config(
        gerrit.server.url,
        password_file,
        identity=[{"gerrit_http_credentials": {}}],
        cache={"ttl": LONG},
        rules=rules(group),
        gerrit={"events": events},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(gerrit: Any, gerrit_events: EventsSetup, password_file: Path, group: str) -> AsyncIterator[AuthzServer]:
    # A reconnect waits 3-6 s: long enough for the close-connection test to change Gerrit inside the gap.
    events = {**gerrit_events.config(), "backoff_initial": "6s", "backoff_max": "6s"}
    async with running_server(config_for(gerrit, password_file, group, events)) as server:
        assert server.events is not None
        await asyncio.wait_for(server.events.connected.wait(), 20)
        yield server


async def status(app: AuthzServer, path: str, user: tuple[str, str]) -> int:
    async with check_stub(app.address) as stub:
        resp = await stub.Check(check_request("GET", path, {"authorization": basic(*user)}), timeout=10)
    return 200 if resp.status.code == 0 else int(http_response(resp).status.code)


async def follows(name: str, app: AuthzServer, path: str, user: tuple[str, str], want: int, since: float) -> None:
    """Poll until the decision is ``want`` (bounded at POLL_S); record the delay since the change in Gerrit."""
    got = 0
    while time.monotonic() - since < POLL_S:
        got = await status(app, path, user)
        if got == want:
            DELAYS[name] = time.monotonic() - since
            print(f"\n{name}: decision followed Gerrit in {DELAYS[name] * 1000:.0f} ms")
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{name}: still {got} after {POLL_S:.0f}s, want {want}")


def new_project(rest: Rest, parent: str = "All-Projects") -> str:
    name = f"events/{uuid.uuid4().hex[:8]}"
    rest.put(f"projects/{_q(name)}", {"branches": ["main"], "create_empty_commit": True, "parent": parent})
    return name


def block_reads(rest: Rest, project: str) -> None:
    block = {"read": {"rules": {"global:Registered-Users": {"action": "BLOCK"}}}}
    rest.post(f"projects/{_q(project)}/access", {"add": {"refs/heads/*": {"permissions": block}}})


def new_change(rest: Rest, gerrit: Any) -> int:
    body = {"project": gerrit.org.build_project, "branch": "main", "subject": f"events {uuid.uuid4().hex[:6]}"}
    return int(rest.post("changes/", body)["_number"])


async def test_group_membership_removal(app: AuthzServer, gerrit: Any, rest: Rest, group: str) -> None:
    carol = gerrit.org.carol.auth
    rest.post(f"groups/{group}/members.add", {"members": ["carol"]})
    await follows("group add (cache primed)", app, "/group", carol, 200, time.monotonic())
    assert await status(app, "/group", carol) == 200
    since = time.monotonic()
    rest.post(f"groups/{group}/members.delete", {"members": ["carol"]})
    await follows("group membership removed", app, "/group", carol, 403, since)


async def test_block_added_on_a_project(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    project = new_project(rest)
    path, carol = f"/src/{_q(project)}/-/main", gerrit.org.carol.auth
    assert await status(app, path, carol) == 200
    since = time.monotonic()
    block_reads(rest, project)
    await follows("BLOCK on the project", app, path, carol, 403, since)


async def test_permission_added_in_a_parent_reaches_the_child(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    parent = new_project(rest)
    child = new_project(rest, parent=parent)
    path, carol = f"/src/{_q(child)}/-/main", gerrit.org.carol.auth
    assert await status(app, path, carol) == 200
    since = time.monotonic()
    block_reads(rest, parent)
    await follows("BLOCK in the parent, seen on the child", app, path, carol, 403, since)


async def test_vote_removed(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    number = new_change(rest, gerrit)
    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": 1}})
    path, carol = f"/voted/{number}", gerrit.org.carol.auth
    await follows("vote added (cache primed)", app, path, carol, 200, time.monotonic())
    since = time.monotonic()
    rest.call("DELETE", f"changes/{number}/reviewers/admin/votes/Code-Review")
    await follows("vote removed", app, path, carol, 403, since)


async def test_change_merged(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    number = new_change(rest, gerrit)
    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": 2, "Verified": 1}})
    path, carol = f"/merged/{number}", gerrit.org.carol.auth
    assert await status(app, path, carol) == 403
    since = time.monotonic()
    rest.post(f"changes/{number}/submit")
    await follows("change merged", app, path, carol, 200, since)


async def test_change_abandoned(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    number = new_change(rest, gerrit)
    path, carol = f"/open/{number}", gerrit.org.carol.auth
    assert await status(app, path, carol) == 200
    since = time.monotonic()
    rest.post(f"changes/{number}/abandon")
    await follows("change abandoned", app, path, carol, 403, since)


async def test_connection_closed_by_gerrit_acl_changed_meanwhile(
    app: AuthzServer, gerrit: Any, gerrit_events: EventsSetup, rest: Rest
) -> None:
    assert app.events is not None
    project = new_project(rest)
    # The project's own creation events (which drop its answers), and their re-applications, must be over before the
    # cache is primed: only the reconnect may drop the allow cached below.
    await asyncio.sleep(max(SETTLE) + 1.0)
    path, carol = f"/src/{_q(project)}/-/main", gerrit.org.carol.auth
    assert await status(app, path, carol) == 200
    before = app.events.connections
    closed, listing = await close_connections(gerrit_events, gerrit.org.bot.username)
    assert closed, f"no SSH session of the bot to close in:\n{listing}"
    for _ in range(int(POLL_S / 0.02)):
        if not app.events.connected.is_set():
            break
        await asyncio.sleep(0.02)
    assert not app.events.connected.is_set(), "the follower did not notice the closed connection"
    # The stream is down (backoff of at least 3 s): this change's event is never received.
    block_reads(rest, project)
    assert not app.events.connected.is_set(), "reconnected before the change: the gap was not tested"
    assert await status(app, path, carol) == 200  # still the cached allow: nothing told it yet
    await asyncio.wait_for(app.events.connected.wait(), POLL_S)
    assert app.events.connections == before + 1
    assert await status(app, path, carol) == 403  # the reconnect dropped what was cached before the gap


async def test_unknown_host_key_refused_decisions_still_served(
    gerrit: Any,
    gerrit_events: EventsSetup,
    password_file: Path,
    group: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{gerrit_events.port} {' '.join(impostor)}\n")
    events = {**gerrit_events.config(), "known_hosts_file": str(known_hosts), "backoff_initial": "200ms"}
    caplog.set_level(logging.WARNING, logger="gerrit_authz.events")
    async with running_server(config_for(gerrit, password_file, group, events)) as server:
        assert server.events is not None
        for _ in range(int(POLL_S / 0.05)):
            if any(str(known_hosts) in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # several attempts, one line
        assert not server.events.connected.is_set() and server.events.connections == 0
        # Only this follower names this known_hosts file (the module's server logs under the same logger).
        lines = [r.getMessage() for r in caplog.records if str(known_hosts) in r.getMessage()]
        assert len(lines) == 1, lines  # one line per outage, not one per attempt
        assert "host key" in lines[0] and "down" in lines[0]
        assert await status(server, "/src/platform%2Fbuild/-/main", gerrit.org.carol.auth) == 200


async def test_rotated_key_is_read_at_the_next_attempt(
    gerrit: Any,
    gerrit_events: EventsSetup,
    password_file: Path,
    group: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = tmp_path / "key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))  # not registered in Gerrit
    events = {**gerrit_events.config(), "private_key_file": str(key), "backoff_initial": "200ms", "backoff_max": "1s"}
    caplog.set_level(logging.WARNING, logger="gerrit_authz.events")
    async with running_server(config_for(gerrit, password_file, group, events)) as server:
        assert server.events is not None
        for _ in range(int(POLL_S / 0.05)):
            if any("refused" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert any("refused" in r.getMessage() for r in caplog.records) and not server.events.connected.is_set()
        key.write_bytes(gerrit_events.private_key_file.read_bytes())  # the operator rotates the secret in place
        await asyncio.wait_for(server.events.connected.wait(), POLL_S)
        assert any("restored" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------
# Issue 17: spellings, a project's changes, and a stream that falls behind
# ---------------------------------------------------------------------------------------------------------------


def top_project(rest: Rest) -> str:
    """A project without '/' (so ``NAME.git`` is one path segment)."""
    name = f"fresh-{uuid.uuid4().hex[:8]}"
    rest.put(f"projects/{name}", {"branches": ["main"], "create_empty_commit": True})
    return name


async def test_a_block_on_web_reaches_the_answer_fetched_as_web_git(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    project = top_project(rest)
    await asyncio.sleep(1.0)  # the project's creation events first
    carol = gerrit.org.carol.auth
    assert await status(app, f"/src/{project}.git/-/main", carol) == 200  # Gerrit answers web.git as web
    since = time.monotonic()
    block_reads(rest, project)  # its refs/meta/config event names "web", never "web.git"
    await follows("BLOCK on web, seen on web.git", app, f"/src/{project}.git/-/main", carol, 403, since)


async def test_a_submit_requirement_added_drops_the_cached_submittable_change(
    app: AuthzServer, gerrit: Any, rest: Rest
) -> None:
    project = top_project(rest)
    number = int(rest.post("changes/", {"project": project, "branch": "main", "subject": "sr"})["_number"])
    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": 2, "Verified": 1}})
    path, carol = f"/submittable/{number}", gerrit.org.carol.auth
    await follows("submittable (cache primed)", app, path, carol, 200, time.monotonic())
    assert await status(app, path, carol) == 200
    since = time.monotonic()
    requirement = {"submittability_expression": "hashtag:never-set", "allow_override_in_child_projects": False}
    rest.put(f"projects/{project}/submit_requirements/Never", requirement)  # a refs/meta/config change only
    await follows("submit requirement added", app, path, carol, 403, since)


async def test_invalidate_web_reaches_the_answer_fetched_as_web_git(
    gerrit: Any, rest: Rest, password_file: Path, group: str
) -> None:
    # No event stream: only Invalidate can explain the change.
    config = make_config(
        gerrit.server.url,
        password_file,
        identity=[{"gerrit_http_credentials": {}}],
        cache={"ttl": LONG},
        rules=rules(group),
    )
    project = top_project(rest)
    carol = gerrit.org.carol.auth
    async with running_server(config) as server:
        assert await status(server, f"/src/{project}.git/-/main", carol) == 200
        block_reads(rest, project)
        assert await status(server, f"/src/{project}.git/-/main", carol) == 200  # cached
        async with grpc.aio.insecure_channel(server.admin_address) as channel:
            await admin_pb2_grpc.AdminStub(channel).Invalidate(admin_pb2.InvalidateRequest(project=project), timeout=10)
        assert await status(server, f"/src/{project}.git/-/main", carol) == 403
        assert await status(server, f"/src/{project}/-/main", carol) == 403


async def explain_sources(app: AuthzServer, path: str, user: tuple[str, str]) -> list[str]:
    async with grpc.aio.insecure_channel(app.admin_address) as channel:
        request = admin_pb2.ExplainRequest(method="GET", path=path, headers={"authorization": basic(*user)})
        decision = await admin_pb2_grpc.AdminStub(channel).Explain(request, timeout=10)
    return [r.source for r in decision.requirements if r.kind == "permission"]


async def test_a_reader_that_falls_behind_gets_dropped_output_and_it_drops_the_cache(
    app: AuthzServer, gerrit: Any, gerrit_events: EventsSetup, rest: Rest
) -> None:
    # A second stream-events session of the bot whose reader is throttled: a 512-byte SSH window it never reads,
    # so Gerrit's writer blocks, its per-session queue fills, and Gerrit drops events for it.
    assert app.events is not None
    async with asyncssh.connect(
        "127.0.0.1",
        gerrit_events.port,
        username=gerrit.org.bot.username,
        client_keys=[str(gerrit_events.private_key_file)],
        known_hosts=str(gerrit_events.known_hosts_file),
        agent_path=None,
        config=[],
    ) as conn:
        slow = await conn.create_process("gerrit stream-events", stdin=asyncssh.DEVNULL, encoding=None, window=512)
        await asyncio.sleep(1.0)
        number = new_change(rest, gerrit)
        for i in range(200):  # each vote is a comment-added and a ref-updated of the change's meta ref
            rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": i % 2}})
        lines: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                while line := await slow.stdout.readline():
                    lines.append(line)
                    if b'"dropped-output"' in line:
                        break
        slow.close()
    dropped = [line for line in lines if b'"dropped-output"' in line]
    assert dropped, f"Gerrit never dropped output for the throttled reader ({len(lines)} lines read)"
    print(f"\nGerrit's marker after {len(lines)} lines: {dropped[0].decode().strip()}")

    # The follower (Checks' cache) applies that very line: everything cached is dropped.
    project = new_project(rest)
    await asyncio.sleep(1.0)
    path, carol = f"/src/{_q(project)}/-/main", gerrit.org.carol.auth
    assert await explain_sources(app, path, carol) == ["gerrit"]
    assert await explain_sources(app, path, carol) == ["cache"]
    await app.events.handle_line(dropped[0])
    assert await explain_sources(app, path, carol) == ["gerrit"]


async def test_a_revoke_during_a_flood_of_votes_is_still_followed(app: AuthzServer, gerrit: Any, rest: Rest) -> None:
    changes = [new_change(rest, gerrit) for _ in range(4)]
    project = new_project(rest)
    await asyncio.sleep(1.0)
    path, carol = f"/src/{_q(project)}/-/main", gerrit.org.carol.auth
    assert await status(app, path, carol) == 200
    stop = threading.Event()
    votes = [0]

    def flood() -> None:  # one commenter voting as fast as Gerrit takes it, bounded in count and time
        started = time.monotonic()
        while not stop.is_set() and votes[0] < 400 and time.monotonic() - started < 30:
            number = changes[votes[0] % len(changes)]
            rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": votes[0] % 2}})
            votes[0] += 1

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        await asyncio.sleep(2.0)  # the stream is busy with votes
        latencies = []
        for _ in range(50):  # cached Checks keep being answered meanwhile
            t0 = time.perf_counter()
            assert await status(app, path, carol) == 200
            latencies.append(time.perf_counter() - t0)
        since = time.monotonic()
        block_reads(rest, project)
        await follows("BLOCK during a flood of votes", app, path, carol, 403, since)
    finally:
        stop.set()
        await asyncio.to_thread(flooder.join, 30)
    latencies.sort()
    print(f"flood: {votes[0]} votes; cached Check p50 {latencies[25] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert votes[0] > 20, "the flood did not happen"
