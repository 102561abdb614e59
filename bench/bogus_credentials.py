"""A stream of distinct bogus Basic credentials against the memory cache: RSS reaches a plateau at max_entries.

Each credential is verified once (the Gerrit double says "refused"), and its negative answer is cached under an
HMAC key. Without a bound every one would stay ``ttl.negative`` (here 1 h, so none expire during the run); with
``cache.max_entries`` the least recently used are evicted. Prints RSS every 20,000 credentials and the spread of
RSS after the bound was reached.

    .venv/bin/python bench/bogus_credentials.py [--count 200000] [--max-entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time

from authz_server._cache import CachedGerrit
from authz_server._deadline import Deadline
from authz_server._facts import Account, Fact
from authz_server._store import MemoryStore
from authz_server.config import TtlConfig


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RefusingGerrit:
    """Gerrit refusing every credential (the only call this benchmark makes)."""

    async def verify_credentials(self, username: str, password: str, deadline: Deadline) -> Fact[Account | None]:
        return Fact(None, detail="Gerrit refused the username/password")


async def main(count: int, max_entries: int) -> dict[str, object]:
    store = MemoryStore(max_entries)
    ttl = TtlConfig(negative=3600)
    cache = CachedGerrit(RefusingGerrit(), store, ttl, stale_if_error=300, secret=b"bench")  # type: ignore[arg-type]
    samples: list[tuple[int, float]] = []
    started = time.monotonic()
    for i in range(1, count + 1):
        await cache.verify_credentials(f"mallory{i}", f"guess-{i:08d}", Deadline.after(5))
        if i % 100 == 0:
            # Let the loop run, as a server's does between requests (it purges cancelled expiry timers then).
            await asyncio.sleep(0)
        if i % 20_000 == 0:
            gc.collect()
            samples.append((i, round(rss_mib(), 1)))
            print(f"{i:>8} credentials  {len(store):>7} entries  RSS {samples[-1][1]:7.1f} MiB", flush=True)
    after_bound = [rss for n, rss in samples if n > max_entries + 20_000]
    result = {
        "count": count,
        "max_entries": max_entries,
        "entries_at_end": len(store),
        "rss_mib": samples,
        "rss_spread_after_bound_mib": round(max(after_bound) - min(after_bound), 1) if after_bound else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    await store.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--max-entries", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.count, args.max_entries))))
