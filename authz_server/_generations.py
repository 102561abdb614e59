"""Generations: how an invalidation reaches every cached answer without finding it (nothing to search, nothing to miss).

Every cached answer depends on a few *scopes* (an account, a name, a change, every project's configuration, every
group membership, ...). An invalidation *bumps* the scopes it names; an answer is current only if none of its
scopes was bumped since its lookup **started**. Nothing is searched and nothing is deleted, so no spelling, no
eviction and no lookup in flight can make an invalidation miss.

The state is a logical clock and, per scope, the clock value of its last bump:

- a lookup reads a :class:`Snapshot` (``epoch``, ``clock``) before it asks Gerrit; its answer is stored with it;
- ``bump(scopes)`` increments the clock and sets each scope's generation to the new value (O(1) per scope);
- an answer is current iff its snapshot's epoch is the current epoch and every scope's generation is at most its
  snapshot's clock. A scope bumped after the lookup started has a larger generation: the answer is never used,
  fresh or stale, and a lookup started afterwards reads a later clock, so it never joins the old one's flight.
- "everything" starts a new random epoch: every answer stored before misses.

Scopes hash (CRC-32, the same on every replica) into :data:`BUCKETS` fixed slots, so the table has a fixed size
whatever the traffic and no entry of it can be evicted on its own: a collision only drops more than asked. The
only loss possible is the whole table (a Redis ``allkeys-lru`` eviction or restart), and a lost table has no
epoch: a new random one is drawn, so everything stored before reads as changed.

Scopes are named by Gerrit's canonical values as found in the answer (an account's id, username and email; a
change's number) as well as by what the request named, so an answer is reached whatever spelling fetched it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUCKETS",
    "CONFIG",
    "EVERY_ACCOUNT",
    "EVERY_CHANGE",
    "GROUPS",
    "Generations",
    "MemoryGenerations",
    "SharedGenerations",
    "Snapshot",
    "account_scope",
    "bucket",
    "buckets_of",
    "change_scope",
    "name_scope",
    "new_epoch",
    "process_generations",
    "share_generations",
]

#: Slots of the generation table (a power of two). 65536 small integers: ~0.5 MiB in process, a few MiB in Redis.
BUCKETS = 1 << 16

#: Every account (an account named in a way that cannot be resolved right now).
EVERY_ACCOUNT = "accounts"
#: Every group membership (and what follows from memberships: access rights, capabilities, submit requirements).
GROUPS = "groups"
#: Every project's configuration: access rights, inheritance, labels and submit requirements. One scope for all
#: projects, because a project's answers also depend on every project it inherits from (learning the tree would
#: cost Gerrit calls on the Check path); configuration changes are rare, so dropping them all costs little.
CONFIG = "config"
#: Every change (a change named by a Change-Id, whose number is not known without asking Gerrit).
EVERY_CHANGE = "changes"


def account_scope(account_id: int | str) -> str:
    return f"a:{account_id}"


def name_scope(name: str) -> str:
    """A username or email, case-folded: two spellings of one name share the scope (a collision drops more, never
    less)."""
    return f"n:{name.lower()}"


def change_scope(number: int | str) -> str:
    return f"c:{number}"


def bucket(scope: str) -> int:
    """The table slot of ``scope`` (stable across processes and replicas, unlike ``hash``)."""
    return zlib.crc32(scope.encode()) & (BUCKETS - 1)


def buckets_of(scopes: Iterable[str]) -> tuple[int, ...]:
    """The distinct table slots of ``scopes``."""
    return tuple({bucket(s) for s in scopes})


def new_epoch() -> str:
    return os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """When a lookup started: the epoch and the clock. ``epoch == ""`` is a snapshot that is never current
    (taken while the shared table could not be read)."""

    epoch: str
    clock: int


class MemoryGenerations:
    """The table for one process (the memory store). Reads and bumps are synchronous and O(scopes)."""

    __slots__ = ("_table", "clock", "epoch", "snapshot")

    def __init__(self) -> None:
        self._table = [0] * BUCKETS
        self.epoch = new_epoch()
        self.clock = 0
        #: The current snapshot, one object until the next bump (no allocation per lookup).
        self.snapshot = Snapshot(self.epoch, 0)

    def current(self, snapshot: Snapshot, buckets: Iterable[int]) -> bool:
        """Whether nothing in ``buckets`` was bumped since ``snapshot`` (and its epoch is still the one)."""
        if snapshot.epoch != self.epoch:
            return False
        table, clock = self._table, snapshot.clock
        for b in buckets:  # noqa: SIM110 - a plain loop: this runs for every cached fact of every Check
            if table[b] > clock:
                return False
        return True

    def bump(self, buckets: Iterable[int]) -> None:
        self.clock += 1
        for b in buckets:
            self._table[b] = self.clock
        self.snapshot = Snapshot(self.epoch, self.clock)

    def bump_all(self) -> None:
        self.epoch = new_epoch()
        self.clock += 1
        self.snapshot = Snapshot(self.epoch, self.clock)


class SharedGenerations:
    """The table in a file mapped into every worker process of one host (``server.workers``): a bump in any of
    them is seen by the next read in all of them, with no message to deliver and none to miss.

    Layout: 64-bit integers ``[epoch, clock, slot 0 .. slot BUCKETS-1]``. Reads take no lock: a bump writes its
    slots before it advances the clock, so a reader sees either the whole bump or a table on which an answer it
    would have kept was looked up before the bump (and so is refused when checked). Bumps are serialised by an
    ``flock`` on the file, so two processes never draw the same clock value.
    """

    __slots__ = ("_epoch", "_epoch_text", "_fd", "_map", "_snapshot", "_table")

    SIZE = (BUCKETS + 2) * 8

    def __init__(self, path: str | Path) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self.SIZE)
        self._table = memoryview(self._map).cast("q")
        self._epoch = 0
        self._epoch_text = ""
        self._snapshot = Snapshot("", -1)

    @classmethod
    def create(cls, path: str | Path) -> SharedGenerations:
        """A new table file at ``path`` (only the owner may read it), with a random epoch."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, cls.SIZE)
        finally:
            os.close(fd)
        table = cls(path)
        table._table[0] = int.from_bytes(os.urandom(7), "big") + 1
        return table

    def _epoch_now(self) -> str:
        epoch = self._table[0]
        if epoch != self._epoch:
            self._epoch, self._epoch_text = epoch, format(epoch, "x")
        return self._epoch_text

    @property
    def snapshot(self) -> Snapshot:
        clock = self._table[1]  # read before the epoch: a bump_all writes the epoch first
        snapshot = self._snapshot
        epoch = self._epoch_now()
        if snapshot.clock != clock or snapshot.epoch != epoch:
            snapshot = self._snapshot = Snapshot(epoch, clock)
        return snapshot

    def current(self, snapshot: Snapshot, buckets: Iterable[int]) -> bool:
        if snapshot.epoch != self._epoch_now():
            return False
        table, clock = self._table, snapshot.clock
        for b in buckets:  # noqa: SIM110 - as MemoryGenerations.current
            if table[b + 2] > clock:
                return False
        return True

    def bump(self, buckets: Iterable[int]) -> None:
        table = self._table
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            clock = table[1] + 1
            for b in buckets:
                table[b + 2] = clock
            table[1] = clock
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def bump_all(self) -> None:
        table = self._table
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            table[0] = int.from_bytes(os.urandom(7), "big") + 1
            table[1] += 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._table.release()
        self._map.close()
        os.close(self._fd)


Generations = MemoryGenerations | SharedGenerations

_shared: SharedGenerations | None = None


def share_generations(path: str | Path | None) -> None:
    """Make every memory store of this process use the table file at ``path`` (a worker of ``server.workers``);
    None: a table of its own per store (one process)."""
    global _shared
    _shared = None if path is None else SharedGenerations(path)


def process_generations() -> Generations:
    """The table a new memory store uses: the host's shared one in a worker, else a new one of its own."""
    return _shared if _shared is not None else MemoryGenerations()
