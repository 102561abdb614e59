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

import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BUCKETS",
    "CONFIG",
    "EVERY_ACCOUNT",
    "EVERY_CHANGE",
    "GROUPS",
    "MemoryGenerations",
    "Snapshot",
    "account_scope",
    "bucket",
    "change_scope",
    "name_scope",
    "new_epoch",
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
