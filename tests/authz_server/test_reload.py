"""LiveRuntime: what a reload swaps, what it keeps (the cache, the credential key) and when it starts afresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _support.factories import make_input

from authz_server._app import build_components
from authz_server._deadline import Deadline
from authz_server._generations import GROUPS, bucket
from authz_server._opstats import ReloadStats
from authz_server._reload import LiveRuntime, Reloader, needs_restart
from authz_server._store import Entry, Store
from authz_server.config import Config, parse_config


async def put(store: Store) -> None:
    # An entry depending on every group membership.
    await store.write("k", Entry(["v"], 9e9, 9e9, await store.snapshot(), (bucket(GROUPS),)), 60)


async def held(store: Store) -> bool:
    entry, current, _ = await store.read("k")
    return entry is not None and current


def config(tmp_path: Path, *, url: str = "http://127.0.0.1:9", require: Any = "anyone", **server: Any) -> Config:
    secret = tmp_path / "pw"
    secret.write_text("pw")
    return parse_config(
        {
            "server": server,
            "gerrit": {"url": url, "username": "bot", "password_file": str(secret)},
            "rules": [{"name": "r", "require": require}],
        }
    )


async def test_policy_swap_keeps_the_cache_and_the_credential_key(tmp_path: Path) -> None:
    runtime = LiveRuntime(build_components(config(tmp_path)), retire_after=0)
    first = runtime.components
    await put(first.store)
    assert (await runtime.decide(make_input("GET", "/x"), Deadline.after(5))).allowed
    await runtime.apply(config(tmp_path, require={"not": "anyone"}))
    assert not (await runtime.decide(make_input("GET", "/x"), Deadline.after(5))).allowed
    now = runtime.components
    assert now.store is first.store and await held(now.store)
    assert now.credential_key == first.credential_key and now.http is first.http
    await now.cache.invalidate(group="g")  # through the new cache: the old one (finishing its Checks) sees it
    assert not await held(first.store)
    await runtime.aclose()


async def test_another_gerrit_starts_with_an_empty_cache(tmp_path: Path) -> None:
    runtime = LiveRuntime(build_components(config(tmp_path)), retire_after=0)
    await put(runtime.components.store)
    first = runtime.components
    await runtime.apply(config(tmp_path, url="http://127.0.0.1:10"))
    assert runtime.components.store is not first.store and not await held(runtime.components.store)
    await runtime.aclose()


async def test_in_flight_snapshot_is_the_old_authorizer(tmp_path: Path) -> None:
    runtime = LiveRuntime(build_components(config(tmp_path)), retire_after=0)
    old = runtime.components.authorizer
    await runtime.apply(config(tmp_path))
    assert runtime.components.authorizer is not old
    await runtime.aclose()


def test_listener_changes_are_named_as_needing_a_restart(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, listen="127.0.0.1:1", check_timeout="3s", mode="shadow")
    assert needs_restart(old, new) == ["server.listen", "server.check_timeout"]


@pytest.mark.parametrize("bad", ["rules: []\n", "gerrit: [\n", ""])
async def test_reloader_refuses_a_bad_file_and_counts_it(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(bad)
    runtime = LiveRuntime(build_components(config(tmp_path)), retire_after=0)
    before = runtime.components
    stats = ReloadStats()
    assert await Reloader(path, runtime, stats, interval=0).reload("test") is False
    assert runtime.components is before and stats.failures == 1 and stats.successes == 0
    await runtime.aclose()
