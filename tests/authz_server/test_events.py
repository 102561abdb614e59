"""The event follower without Gerrit: applying lines to the cache, start-up checks, backoff and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml
from _support.proc import free_port
from prometheus_client import CollectorRegistry

from authz_server._events import EventFollower
from authz_server._metrics import StreamMetrics
from authz_server.config import EventsConfig, parse_config
from authz_server.errors import ConfigError

RECORDED = Path(__file__).resolve().parents[1] / "data" / "gerrit_events.jsonl"


class RecordingCache:
    """An Invalidator double: records each call; fails for project names starting with "boom"."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def invalidate(self, **kwargs: Any) -> int:
        if str(kwargs.get("project", "")).startswith("boom"):
            raise ConnectionError("store down")
        self.calls.append(kwargs)
        return 1


@pytest.fixture
def events_config(tmp_path: Path) -> Any:
    def factory(**overrides: Any) -> EventsConfig:
        key = tmp_path / "key"
        if not key.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
        hosts = tmp_path / "known_hosts"
        if not hosts.exists():
            public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
            hosts.write_text("[127.0.0.1]:29418 " + " ".join(public.split()[:2]) + "\n")
        data = {"ssh_url": "ssh://authz-bot@127.0.0.1:29418", "private_key_file": key, "known_hosts_file": hosts}
        return EventsConfig.model_validate({**data, **overrides})

    return factory


async def test_recorded_lines_reach_the_cache(events_config: Any) -> None:
    cache = RecordingCache()
    follower = EventFollower(events_config(), cache, settle=())
    for line in RECORDED.read_bytes().splitlines():
        await follower.handle_line(line)
    assert {"project": "All-Projects"} in cache.calls and {"project": "platform/build"} in cache.calls
    assert any("group" in c for c in cache.calls)
    assert any("change" in c for c in cache.calls)
    assert follower.last_event is not None


async def test_a_malformed_line_is_logged_and_clears_the_cache(
    events_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RecordingCache()
    follower = EventFollower(events_config(), cache, settle=())
    caplog.set_level(logging.WARNING, logger="gerrit_authz.events")
    assert [i.kind for i in await follower.handle_line(b"{not json\n")] == ["everything"]  # it may have mattered
    assert await follower.handle_line(b"\n") == []
    merged = b'{"type":"change-merged","change":{"number":7}}\n'
    assert [i.key for i in await follower.handle_line(merged)] == ["7"]
    assert cache.calls == [{"everything": True}, {"change": "7"}]
    assert len(caplog.records) == 1 and "malformed" in caplog.records[0].getMessage()


async def test_a_failed_invalidation_clears_the_cache_and_the_stream_goes_on(
    events_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RecordingCache()
    follower = EventFollower(events_config(), cache, settle=())
    boom = b'{"type":"ref-updated","refUpdate":{"project":"boom","refName":"refs/meta/config"}}'
    await follower.handle_line(boom)
    await follower.handle_line(b'{"type":"change-abandoned","change":{"number":8}}')
    assert cache.calls == [{"everything": True}, {"change": "8"}]
    assert any("failed" in r.getMessage() for r in caplog.records)


async def test_a_store_that_cannot_even_be_cleared_ends_the_session(events_config: Any) -> None:
    class DownCache(RecordingCache):
        async def invalidate(self, **kwargs: Any) -> int:
            raise ConnectionError("store down")

    follower = EventFollower(events_config(), DownCache(), settle=())
    with pytest.raises(ConnectionError):  # the reconnect clears the cache before following again
        await follower.handle_line(b'{"type":"change-abandoned","change":{"number":8}}')


def test_unreadable_key_is_a_config_error_naming_the_key(events_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        EventFollower(events_config(private_key_file=tmp_path / "missing"), RecordingCache())
    assert err.value.errors[0][0] == "gerrit.events.private_key_file"
    (tmp_path / "garbage").write_text("not a key")
    with pytest.raises(ConfigError) as err:
        EventFollower(events_config(private_key_file=tmp_path / "garbage"), RecordingCache())
    assert err.value.errors[0][0] == "gerrit.events.private_key_file"
    assert "not a key" not in str(err.value.errors)  # never echo the file's content


def test_unreadable_known_hosts_is_a_config_error(events_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        EventFollower(events_config(known_hosts_file=tmp_path / "missing"), RecordingCache())
    assert err.value.errors[0][0] == "gerrit.events.known_hosts_file"


@pytest.mark.parametrize(
    "url",
    [
        "http://authz-bot@h:29418",
        "ssh://h:29418",
        "ssh://authz-bot@:29418",
        "ssh://a@h:x",
        "ssh://a:pw@h",
        "ssh://a@h/p",
    ],
)
def test_bad_ssh_url_is_refused(events_config: Any, url: str) -> None:
    with pytest.raises(ValueError, match="ssh_url"):
        events_config(ssh_url=url)


def test_ssh_url_parts(events_config: Any) -> None:
    cfg = events_config(ssh_url="ssh://authz-bot@gerrit.example.com")
    assert (cfg.username, cfg.host, cfg.port) == ("authz-bot", "gerrit.example.com", 29418)


async def test_refused_connection_backs_off_and_warns_once(
    events_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens: every attempt is refused at once
    registry = CollectorRegistry()
    cache = RecordingCache()
    follower = EventFollower(
        events_config(ssh_url=f"ssh://authz-bot@127.0.0.1:{port}", backoff_initial="50ms", backoff_max="200ms"),
        cache,
        observer=StreamMetrics(registry),
    )
    caplog.set_level(logging.WARNING, logger="gerrit_authz.events")
    follower.start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await follower.stop()
    reconnects = registry.get_sample_value("gerrit_authz_events_reconnects_total") or 0
    # 50, 100, 200, 200 ... ms with jitter of up to half: more than 3 attempts, fewer than unbounded.
    assert 3 <= reconnects <= 30
    assert registry.get_sample_value("gerrit_authz_events_connected") == 0
    assert registry.get_sample_value("gerrit_authz_events_seconds_since_last_event") == -1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "down" in warnings[0] and str(port) in warnings[0]
    assert cache.calls == [] and not follower.connected.is_set()


def test_stream_metrics_count_events_and_invalidations() -> None:
    registry = CollectorRegistry()
    now = [100.0]
    metrics = StreamMetrics(registry, clock=lambda: now[0])
    metrics.connected(True)
    metrics.event("change-merged")
    metrics.event("change-merged")
    metrics.invalidation("change")
    now[0] = 102.5
    assert registry.get_sample_value("gerrit_authz_events_connected") == 1
    assert registry.get_sample_value("gerrit_authz_events_received_total", {"type": "change-merged"}) == 2
    assert registry.get_sample_value("gerrit_authz_events_invalidations_total", {"kind": "change"}) == 1
    assert registry.get_sample_value("gerrit_authz_events_seconds_since_last_event") == 2.5


def _uncomment_block(text: str, head: str) -> str:
    """Uncomment the commented-out block that starts with ``head`` (and only it: other examples stay comments)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith(head):
            inside = True
            line = line.replace("# ", "", 1)
        elif inside and line.startswith("  #   "):
            line = "    " + line[len("  #   ") :]
        else:
            inside = False
        out.append(line)
    return "\n".join(out)


def test_the_examples_events_block_parses(example_config_path: Path) -> None:
    text = _uncomment_block(example_config_path.read_text(), "  # events:")
    config = parse_config(yaml.safe_load(text))
    assert config.gerrit.events is not None
    assert (config.gerrit.events.username, config.gerrit.events.port) == ("authz-bot", 29418)
    assert str(config.gerrit.events.known_hosts_file) == "/etc/gerrit-authz/known_hosts"


def test_serve_with_an_unreadable_key_exits_2_naming_it(example_config_path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(example_config_path.read_text())
    (tmp_path / "password").write_text("pw")
    (tmp_path / "known_hosts").write_text("")
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": None})
    data["gerrit"].pop("password_env")
    data["gerrit"]["password_file"] = str(tmp_path / "password")
    data["gerrit"]["events"] = {
        "ssh_url": "ssh://authz-bot@127.0.0.1:29418",
        "private_key_file": str(tmp_path / "missing-key"),
        "known_hosts_file": str(tmp_path / "known_hosts"),
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "gerrit.events.private_key_file: cannot read" in done.stderr


async def test_dropped_output_drops_everything_and_is_counted(events_config: Any) -> None:
    registry = CollectorRegistry()
    cache = RecordingCache()
    follower = EventFollower(events_config(), cache, observer=StreamMetrics(registry), settle=())

    await follower.handle_line(b'{"type":"dropped-output","eventCreatedOn":1700000000}\n')

    assert cache.calls == [{"everything": True}]
    assert registry.get_sample_value("gerrit_authz_events_dropped_total", {"reason": "gerrit"}) == 1


class SlowCache(RecordingCache):
    """Applies one invalidation per ``step`` set."""

    def __init__(self) -> None:
        super().__init__()
        self.step = asyncio.Event()

    async def invalidate(self, **kwargs: Any) -> int:
        await self.step.wait()
        return await super().invalidate(**kwargs)


def vote(number: int) -> bytes:
    return json.dumps({"type": "comment-added", "change": {"number": number}}).encode() + b"\n"


async def test_a_backlog_beyond_its_bound_drops_everything_instead_of_falling_behind(events_config: Any) -> None:
    registry = CollectorRegistry()
    cache = SlowCache()
    follower = EventFollower(events_config(), cache, observer=StreamMetrics(registry), backlog=10, settle=())
    lines = [vote(n) for n in range(1, 26)] + [b""]

    async def readline() -> bytes:
        return lines.pop(0)  # Gerrit sends faster than the cache applies

    following = asyncio.create_task(follower.follow(readline))
    await asyncio.sleep(0.05)
    assert not lines  # every line was read at once: the reader never waits for the cache
    cache.step.set()
    await asyncio.wait_for(following, 5)

    # The first vote was being applied; then 10 queued; the 11th found the backlog full: those 11 were discarded
    # for one "everything"; the next 10 queued again, and the last 3 overflowed once more.
    assert {"everything": True} in cache.calls
    applied = [c["change"] for c in cache.calls if "change" in c]
    assert applied == sorted(applied) and len(applied) < 25
    dropped = registry.get_sample_value("gerrit_authz_events_dropped_total", {"reason": "backlog"}) or 0
    assert dropped + len(applied) == 25
    assert registry.get_sample_value("gerrit_authz_events_backlog") == 0


async def test_a_short_burst_is_applied_in_order_without_dropping(events_config: Any) -> None:
    cache = RecordingCache()
    follower = EventFollower(events_config(), cache, backlog=100, settle=())
    lines = [vote(n) for n in range(1, 51)] + [b""]

    async def readline() -> bytes:
        return lines.pop(0)

    await asyncio.wait_for(follower.follow(readline), 5)
    assert cache.calls == [{"change": str(n)} for n in range(1, 51)]


async def test_a_store_that_fails_while_following_ends_the_session(events_config: Any) -> None:
    class Broken(RecordingCache):
        async def invalidate(self, **kwargs: Any) -> int:
            raise ConnectionError("store down")

    follower = EventFollower(events_config(), Broken(), settle=())
    lines = [vote(1), vote(2)]

    async def readline() -> bytes:
        return lines.pop(0) if lines else await asyncio.sleep(3600, b"")

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(follower.follow(readline), 5)


async def test_an_answer_fetched_between_the_event_and_gerrit_settling_does_not_live_on(events_config: Any) -> None:
    # Gerrit sends ref-updated as the ref moves, before its own caches follow (bench/event_flood.py saw a group's
    # event 141 ms before the REST call that removed the member returned). A Check in that window fetches the
    # pre-revoke answer after the bump, so it is cached as current: without a second bump it lives for the TTL.
    from authz_server._cache import CachedGerrit
    from authz_server._deadline import Deadline
    from authz_server._facts import Fact, Group
    from authz_server._store import MemoryStore
    from authz_server.config import TtlConfig

    probe = Group("0123456789abcdef0123456789abcdef01234567", "probe")

    class Gerrit:
        def __init__(self) -> None:
            self.groups_of: dict[int, tuple[Group, ...]] = {4: (probe,)}

        async def groups(self, account_id: int, deadline: Deadline) -> Fact[tuple[Group, ...]]:
            return Fact(self.groups_of.get(account_id, ()))

    inner = Gerrit()
    ttl = TtlConfig(account=3600, credentials=3600, groups=3600, capabilities=3600, access=3600, change=3600)
    cache = CachedGerrit(inner, MemoryStore(100), ttl, stale_if_error=300, secret=b"s" * 32)  # type: ignore[arg-type]
    follower = EventFollower(events_config(), cache)
    deadline = Deadline.after(10)
    assert (await cache.groups(4, deadline)).value == (probe,)
    ref = f"refs/groups/{probe.id[:2]}/{probe.id}"
    await follower.handle_line(
        json.dumps({"type": "ref-updated", "refUpdate": {"project": "All-Users", "refName": ref}})
    )
    assert (await cache.groups(4, deadline)).source == "gerrit"  # dropped, and fetched again: Gerrit still says member
    inner.groups_of = {}  # Gerrit's own caches follow, a moment later
    await asyncio.sleep(1.5)
    try:
        assert (await cache.groups(4, deadline)).value == ()  # within the 2 s a revoke may take
    finally:
        await follower.stop()
