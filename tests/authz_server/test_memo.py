"""The decision memo's edges: what a hit looks like (fresh decision id, one audit line with ``"memo": true``, a
metric), what is never remembered (503s, decisions made from stale answers, Checks whose facts cannot be
followed), the match cache's key, and the generation table shared by workers."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from _support.factories import FakeFacts, basic_auth, make_check_request, make_input, make_rules
from gerrit_authz.v1 import admin_pb2

from authz_server._admin import AdminServicer
from authz_server._audit import AuditLog
from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._engine import Authorizer
from authz_server._facts import Account, Fact, Group
from authz_server._generations import SharedGenerations, Snapshot, bucket
from authz_server._identity import BasicCredentialsSource, IdentityResolver
from authz_server._memo import DecisionMemo
from authz_server._metrics import Metrics
from authz_server._servicer import AuthorizationServicer
from authz_server._store import _NEVER, MemoryStore
from authz_server.config import TtlConfig
from authz_server.errors import Unavailable

ALICE = Account(1000001, "alice", "alice@example.com")
DEVS = Group("d" * 40, "devs")
TTL = TtlConfig(account=60, credentials=60, groups=60, capabilities=60, access=60, change=60, negative=10)
RULES = [
    {"name": "devs", "match": {"path": "/g"}, "require": {"group": "devs"}},
    {"name": "post-only", "match": {"path": "/p", "methods": ["POST"]}, "require": "anyone"},
    {"name": "get", "match": {"path_prefix": "/"}, "require": "authenticated"},
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def build(facts: FakeFacts, clock: Clock, *, stale: float = 0.0) -> tuple[Authorizer, CachedGerrit]:
    store = MemoryStore(clock=clock)
    cache = CachedGerrit(facts, store, TTL, stale_if_error=stale, secret=b"k" * 32, clock=clock)
    memo = DecisionMemo(store, b"m" * 32, clock=clock)
    identity = IdentityResolver([BasicCredentialsSource(cache)], cache)
    return Authorizer(make_rules(RULES), identity, cache, memo=memo), cache


def alice_facts() -> FakeFacts:
    return FakeFacts(credentials={("alice", "pw"): ALICE}, groups={ALICE.id: [DEVS]})


AUTH = {"authorization": basic_auth("alice", "pw")}


async def test_a_hit_is_the_same_decision_under_a_fresh_id_with_one_audit_line_and_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    facts = alice_facts()
    authorizer, _ = build(facts, Clock())
    metrics = Metrics()
    servicer = AuthorizationServicer(authorizer, check_timeout=5, retry_after=5, audit=AuditLog(), metrics=metrics)
    caplog.set_level(logging.INFO, logger="gerrit_authz.audit")

    class Ctx:
        def time_remaining(self) -> float:
            return 5.0

    request = make_check_request("GET", "/g", AUTH)
    for _ in range(3):
        assert (await servicer.Check(request, Ctx())).status.code == 0  # type: ignore[arg-type]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gerrit_authz.audit"]
    assert [line["memo"] for line in lines] == [False, True, True]
    assert len({line["decision_id"] for line in lines}) == 3
    assert {line["rule"] for line in lines} == {"devs"} and all(line["allowed"] for line in lines)
    assert facts.count() == 2  # credentials and groups, once
    hits = metrics.registry.get_sample_value("gerrit_authz_decision_memo_hits_total", {"rule": "devs"})
    assert hits == 2


async def test_explain_says_when_it_was_answered_from_the_memo() -> None:
    authorizer, _ = build(alice_facts(), Clock())
    admin = AdminServicer(authorizer, None, check_timeout=5, retry_after=5, audit=AuditLog(lambda line: None))

    class Ctx:
        def time_remaining(self) -> float:
            return 5.0

    request = admin_pb2.ExplainRequest(method="GET", path="/g", headers=AUTH)
    answers = [await admin.Explain(request, Ctx()) for _ in range(2)]  # type: ignore[arg-type]
    assert [(a.allowed, a.rule, a.memo) for a in answers] == [(True, "devs", False), (True, "devs", True)]
    assert answers[0].decision_id != answers[1].decision_id


class _UnreadableGroups(MemoryStore):
    """A shared store whose groups entries cannot be read (what RedisStore answers on a timeout)."""

    async def read(self, key: str) -> tuple[Any, bool, Snapshot]:
        entry, current, snapshot = await super().read(key)
        return (None, False, _NEVER) if key.startswith("groups|") else (entry, current, snapshot)


class _HeldGroups(FakeFacts):
    """Gerrit answering groups as they were when asked, after ``release`` is set."""

    release: asyncio.Event

    async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
        answer = tuple(self.groups_of.get(account_id, ()))
        await self.release.wait()
        return Fact(answer)


async def test_a_check_after_an_invalidation_never_joins_a_lookup_sent_before_it_while_the_store_is_unreadable() -> (
    None
):
    """While the store cannot be read every lookup has the same unknown snapshot: sharing lookups then would give a
    Check that started after a revoke the answer of a request sent before it (and the memo would keep it)."""
    gerrit = _HeldGroups(credentials={("alice", "pw"): ALICE})
    gerrit.groups_of, gerrit.release = {ALICE.id: [DEVS]}, asyncio.Event()
    store = _UnreadableGroups()
    cache = CachedGerrit(gerrit, store, TTL, stale_if_error=0, secret=b"k" * 32)
    identity = IdentityResolver([BasicCredentialsSource(cache)], cache)
    authorizer = Authorizer(make_rules(RULES), identity, cache, memo=DecisionMemo(store, b"m" * 32))
    inp = make_input("GET", "/g", AUTH)
    before = asyncio.create_task(authorizer.decide(inp, Deadline.after(30)))
    await asyncio.sleep(0.01)  # its groups request is on its way
    gerrit.groups_of = {}  # alice leaves devs in Gerrit, and the change is applied
    await cache.invalidate(group="devs")
    after = asyncio.create_task(authorizer.decide(inp, Deadline.after(30)))
    await asyncio.sleep(0.01)
    gerrit.release.set()
    assert (await before).allowed  # decided before the revoke: allowed, as Gerrit said then
    assert not (await after).allowed
    assert not (await authorizer.decide(inp, Deadline.after(30))).allowed  # and nothing remembered says otherwise


async def test_an_undecided_answer_is_never_remembered() -> None:
    facts = alice_facts()
    facts.errors["groups"] = Unavailable("gerrit_unavailable", "down", transient=True)
    authorizer, _ = build(facts, Clock())
    inp = make_input("GET", "/g", AUTH)
    for _ in range(2):
        decision = await authorizer.decide(inp, Deadline.after(5))
        assert decision.error is not None and decision.error.code == "gerrit_unavailable"
        assert not decision.memo
    assert authorizer.memo is not None and len(authorizer.memo) == 0


async def test_a_decision_made_from_a_stale_answer_is_not_remembered() -> None:
    facts, clock = alice_facts(), Clock()
    authorizer, _ = build(facts, clock, stale=600)
    inp = make_input("GET", "/g", AUTH)
    assert (await authorizer.decide(inp, Deadline.after(5))).error is None
    clock.now += 61  # every fact expired; Gerrit is down: the stale answers stand in
    facts.errors.update({m: Unavailable("gerrit_unavailable", "down", transient=True) for m in ("groups",)})
    facts.errors["verify_credentials"] = Unavailable("gerrit_unavailable", "down", transient=True)
    first = await authorizer.decide(inp, Deadline.after(5))
    second = await authorizer.decide(inp, Deadline.after(5))
    assert first.error is None and not first.memo
    assert any(t.source == "stale_cache" for t in first.trace)
    assert not second.memo  # decided again, from the stale answers again


async def test_a_memo_hit_never_outlives_the_shortest_fact_ttl() -> None:
    facts, clock = alice_facts(), Clock()
    authorizer, _ = build(facts, clock)
    inp = make_input("GET", "/g", AUTH)
    await authorizer.decide(inp, Deadline.after(5))
    clock.now += 59
    assert (await authorizer.decide(inp, Deadline.after(5))).memo
    clock.now += 1  # the facts' TTL (60 s) is over: a fresh decision would ask Gerrit
    facts.group_map[ALICE.id] = ()
    decision = await authorizer.decide(inp, Deadline.after(5))
    assert not decision.memo and decision.error is not None and decision.error.code == "requirement_failed"


async def test_the_match_cache_keys_on_the_method_override() -> None:
    facts = alice_facts()
    authorizer, _ = build(facts, Clock())
    plain = make_input("GET", "/p", AUTH)
    assert (await authorizer.decide(plain, Deadline.after(5))).rule == "get"
    overridden = make_input("GET", "/p", {**AUTH, "x-http-method-override": "POST"})
    refused = await authorizer.decide(overridden, Deadline.after(5))
    assert refused.error is not None and refused.error.code == "ambiguous_method"


def test_workers_share_the_generation_table(tmp_path: Path) -> None:
    path = tmp_path / "generations"
    one = SharedGenerations.create(path)
    other = SharedGenerations(path)
    try:
        before = other.snapshot
        assert one.snapshot == before and before.epoch != ""
        slot = bucket("groups")
        one.bump([slot])
        assert not other.current(before, [slot])  # seen by the other process's next read
        assert other.current(before, [bucket("a:1")])
        assert other.snapshot.clock == before.clock + 1
        after = other.snapshot
        other.bump_all()
        assert not one.current(after, [])  # a new epoch: everything before misses
        assert one.snapshot.epoch != after.epoch
        assert not one.current(Snapshot("", -1), [])
    finally:
        one.close()
        other.close()


def test_a_second_table_file_is_refused_rather_than_shared_by_accident(tmp_path: Path) -> None:
    SharedGenerations.create(tmp_path / "g").close()
    with pytest.raises(FileExistsError):
        SharedGenerations.create(tmp_path / "g")
