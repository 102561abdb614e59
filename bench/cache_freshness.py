"""The cache's memory per entry (short keys vs 8 KiB request paths) and the cost of applying one stream event with
100k entries cached, for this tree and, optionally, another checkout (the code before a change).

    python bench/cache_freshness.py [--entries 100000] [--old /path/to/old/checkout]   # ~1 min; in-process only

Each tree runs in a child process with ``PYTHONPATH`` set to it, so both are measured the same way. Memory is what
tracemalloc sees allocated by the store and its keys after filling (the fake Gerrit's answers are shared objects,
so this is the cache's own overhead). An event is one ``comment-added`` (a vote) applied through
``EventFollower.handle_line``, as the stream follower applies it, timed per call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LONG = "|" * 8192  # the worst case for the former tag escaping ('|' became '%7C')


async def _child(entries: int, long_entries: int) -> dict[str, Any]:
    import asyncssh

    from authz_server._cache import CachedGerrit
    from authz_server._deadline import Deadline
    from authz_server._events import EventFollower
    from authz_server._facts import AccessResult, Fact
    from authz_server._store import MemoryStore
    from authz_server.config import EventsConfig, TtlConfig

    allowed = Fact(AccessResult(True))

    class Gerrit:
        async def check_access(self, project: str, account_id: int, ref: str, perm: str, d: Deadline) -> Any:
            return allowed

        async def change(self, change_id: str, d: Deadline) -> Any:
            return Fact(None)

        async def project_parent(self, project: str, d: Deadline) -> str | None:
            return None if project == "All-Projects" else "All-Projects"

    ttl = TtlConfig(access=3600, change=3600, negative=3600)
    deadline = Deadline.after(3600)
    out: dict[str, Any] = {}

    async def fill(n: int, ref: Any) -> tuple[MemoryStore, CachedGerrit, int]:
        gc.collect()
        tracemalloc.start()
        store = MemoryStore(max_entries=n)
        kwargs: dict[str, Any] = {"stale_if_error": 3600, "secret": b"s" * 32}
        cache = CachedGerrit(Gerrit(), store, ttl, **kwargs)  # type: ignore[arg-type]
        for i in range(n):
            await cache.check_access(f"project-{i % 500}", 1000000 + i % 1000, ref(i), "read", deadline)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return store, cache, used

    _, _, short = await fill(entries, lambda i: f"refs/heads/b{i}")
    out["bytes_per_entry_short"] = short / entries
    gc.collect()
    _, _, long = await fill(long_entries, lambda i: f"refs/heads/{LONG}{i}")
    out["bytes_per_entry_8k_path"] = long / long_entries
    out["long_over_short"] = out["bytes_per_entry_8k_path"] / out["bytes_per_entry_short"]
    out["long_entries_measured"] = long_entries
    gc.collect()

    store, cache, _ = await fill(entries, lambda i: f"refs/heads/b{i}")
    # A warm cached lookup (what each fact of a warm Check costs here): CPU time, best of several rounds.
    rounds = []
    for _ in range(7):
        t0 = time.process_time()
        for i in range(20_000):
            await cache.check_access(f"project-{i % 500}", 1000000 + i % 1000, f"refs/heads/b{i}", "read", deadline)
        rounds.append((time.process_time() - t0) / 20_000)
    out["warm_lookup_us_best"] = min(rounds) * 1e6
    out["warm_lookup_us_median"] = statistics.median(rounds) * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "key"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
        hosts = Path(tmp) / "known_hosts"
        public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        hosts.write_text("[127.0.0.1]:29418 " + " ".join(public.split()[:2]) + "\n")
        config = EventsConfig.model_validate(
            {"ssh_url": "ssh://bot@127.0.0.1:29418", "private_key_file": key, "known_hosts_file": hosts}
        )
        follower = EventFollower(config, cache)
    timings = []
    started = time.perf_counter()
    for i in range(2000):
        line = json.dumps({"type": "comment-added", "change": {"number": 10 + i}}).encode()
        t0 = time.perf_counter()
        await follower.handle_line(line)
        timings.append(time.perf_counter() - t0)
        if time.perf_counter() - started > 10:  # the former design takes ~0.1 s an event: bounded in time
            break
    out["entries_cached"] = len(store)
    out["event_us_median"] = statistics.median(timings) * 1e6
    out["event_us_p99"] = sorted(timings)[int(len(timings) * 0.99) - 1 if len(timings) > 1 else 0] * 1e6
    out["events_timed"] = len(timings)
    return out


def _run_tree(tree: Path, entries: int, long_entries: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--child", "--entries", str(entries), "--long-entries", str(long_entries)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--long-entries", type=int, default=0, help="entries with 8 KiB paths (default: --entries)")
    parser.add_argument("--old", type=Path, help="another checkout to measure the same way (e.g. before a change)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    long_entries = args.long_entries or args.entries
    if args.child:
        print(json.dumps(asyncio.run(_child(args.entries, long_entries))))
        return
    results = {"this": _run_tree(REPO, args.entries, long_entries)}
    if args.old is not None:
        # The former design keeps each 8 KiB path's ~24 KB key: fewer entries, or the machine runs out of memory.
        results["old"] = _run_tree(args.old, args.entries, min(long_entries, 10_000))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
