"""The decision memo against the real Gerrit with its event stream: a right revoked while the same Check repeats in
a loop. Every TTL is 10 minutes, so before the event the Checks are memo hits (allowed), and from the first Check
that starts after the event has been applied (its generation bump is in the table), every one is denied: no memo
hit survives the event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _support.authz import basic, check_request, check_stub, make_config, running_server
from _support.gerrit_events import EventsSetup
from _support.gerrit_provision import Rest

from authz_server._generations import GROUPS, bucket
from authz_server._response import http_response
from authz_server._store import MemoryStore

pytestmark = pytest.mark.gerrit

LONG = {"account": "10m", "groups": "10m", "access": "10m", "capabilities": "10m", "change": "10m"}


async def test_a_revoked_membership_denies_the_first_check_after_its_event(
    gerrit: Any, gerrit_events: EventsSetup, password_file: Path, rest: Rest, caplog: pytest.LogCaptureFixture
) -> None:
    group = str(rest.put(f"groups/memo-{uuid.uuid4().hex[:8]}", {"members": ["carol"]})["id"])
    config = make_config(
        gerrit.server.url,
        password_file,
        identity=[{"gerrit_http_credentials": {}}],
        cache={"ttl": LONG, "decision_memo": True},
        rules=[{"name": "group", "match": {"path": "/group"}, "require": {"group": group}}],
        gerrit={"events": gerrit_events.config()},
    )
    caplog.set_level(logging.INFO, logger="gerrit_authz.audit")
    request = check_request("GET", "/group", {"authorization": basic(*gerrit.org.carol.auth)})
    async with running_server(config) as app, check_stub(app.address) as stub:
        assert app.events is not None
        await asyncio.wait_for(app.events.connected.wait(), 20)
        await asyncio.sleep(1.0)  # the group's creation events first
        store = app.components.store
        assert isinstance(store, MemoryStore)

        async def decide() -> int:
            resp = await stub.Check(request, timeout=10)
            return 200 if resp.status.code == 0 else int(http_response(resp).status.code)

        assert await decide() == 200
        before = store.generations.snapshot
        outcomes: list[tuple[bool, int]] = []  # (event applied when the Check started, status)
        started = time.monotonic()
        revoked = False
        while time.monotonic() - started < 15 and sum(applied for applied, _ in outcomes) < 20:
            if len(outcomes) == 20 and not revoked:
                rest.post(f"groups/{group}/members.delete", {"members": ["carol"]})
                revoked = True
            applied = not store.generations.current(before, (bucket(GROUPS),))
            outcomes.append((applied, await decide()))
            await asyncio.sleep(0.005)

    assert revoked and any(applied for applied, _ in outcomes), "the event never arrived"
    first = next(i for i, (applied, _) in enumerate(outcomes) if applied)
    # From the first Check that started after the event was applied, every one is denied; before it, allowed
    # (the one just before may already see the event, applied while its request was on its way).
    assert all(got == 403 for _, got in outcomes[first:]), outcomes
    assert all(got == 200 for _, got in outcomes[: max(first - 1, 0)]), outcomes
    memo = [json.loads(r.getMessage())["memo"] for r in caplog.records if r.name == "gerrit_authz.audit"]
    assert len(memo) == len(outcomes) + 1  # one audit line per Check, memo hit or not
    hits_before = sum(memo[1 : first + 1])
    assert hits_before >= 15, memo  # before the event: answered from the memo
    denied = next(i for i, (_, got) in enumerate(outcomes) if got == 403)
    assert not memo[denied + 1], "the first denial was a memo hit"  # decided afresh, then remembered
    print(f"\nfirst Check after the event: #{first}, denied; {hits_before} memo hits before it")
