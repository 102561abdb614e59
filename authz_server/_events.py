"""Freshness from Gerrit's event stream: follow ``gerrit stream-events`` over SSH and drop what it invalidates.

The follower talks to the cache only (:class:`Invalidator`), never to the Check path. It is an optimisation:
while the stream is down entries still expire on their TTLs, health is untouched, and one WARNING line per
outage says so. Events may have been missed during a gap, so every (re)connection starts by clearing the cache,
after the stream is open: nothing cached before it can outlive it.

Lines are read as fast as Gerrit sends them into a bounded backlog, and applied from it by a second task, so a slow
store never makes this reader slow (Gerrit drops events for slow readers and says so with ``dropped-output``, which
drops everything). When the backlog is full the follower does not fall behind: it discards what is queued and drops
everything instead (counted as dropped events). Each applied event costs the same whatever the cache holds (a
generation bump, :mod:`._generations`).

Gerrit sends ``ref-updated`` as the ref moves, before its own caches (group memberships, project configurations)
follow: a Check in between fetches the answer from before the change *after* the bump, and it would be cached as
current for its TTL. So every invalidation is applied again :data:`SETTLE` seconds later (postponed by a newer event
for the same target, whose own re-applications cover the earlier window; beyond :data:`MAX_PENDING` targets, one
"everything" instead).

The private key and ``known_hosts`` are read at every connection attempt, so a rotated key (or host key) is
used from the next connection on without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ._event_map import DROPPED_OUTPUT, Invalidation, MalformedEvent, event_type, invalidations, parse_line
from ._facts import Invalidator
from ._ssh import asyncssh
from .config import EventsConfig
from .errors import ConfigError

__all__ = ["EventFollower", "StreamObserver", "load_client_key"]

log = logging.getLogger("gerrit_authz.events")
_COMMAND = "gerrit stream-events"
_STABLE = 30.0  # a connection that lasted this long resets the backoff
_MAX_LINE = 1 << 20  # Gerrit's events are a few KB; a longer line is not one
BACKLOG = 1000  # lines read but not applied yet; beyond it, everything is dropped rather than fall behind
_OVERFLOW = b""  # queued in place of a discarded backlog: drop everything
#: Seconds after an event at which its invalidations are applied again (see the module docstring): the first within
#: the 2 s a revoke may take, the second for a Gerrit slowed down by load.
SETTLE = (1.0, 5.0)
MAX_PENDING = 10 * BACKLOG  # distinct targets awaiting re-application; beyond, "everything" replaces them


class StreamObserver(Protocol):
    """Where the follower reports what it does (Prometheus in :mod:`._metrics`)."""

    def connected(self, up: bool) -> None: ...
    def event(self, kind: str) -> None: ...
    def invalidation(self, kind: str) -> None: ...
    def reconnect(self) -> None: ...
    def dropped(self, reason: str, count: int) -> None:
        """``count`` events were lost: ``gerrit`` (Gerrit's dropped-output) or ``backlog`` (ours, discarded)."""
        ...

    def backlog(self, size: int) -> None: ...


class _NoObserver:
    def connected(self, up: bool) -> None:
        pass

    def event(self, kind: str) -> None:
        pass

    def invalidation(self, kind: str) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def dropped(self, reason: str, count: int) -> None:
        pass

    def backlog(self, size: int) -> None:
        pass


def load_client_key(config: EventsConfig) -> asyncssh.SSHKey:
    """The private key of ``gerrit.events.private_key_file``; :class:`ConfigError` naming the key when unusable."""
    try:
        return asyncssh.read_private_key(str(config.private_key_file))
    except OSError as exc:
        raise ConfigError([("gerrit.events.private_key_file", f"cannot read: {exc.strerror}")]) from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        # The message names the format problem, never the key material.
        raise ConfigError([("gerrit.events.private_key_file", f"not a usable private key: {exc}")]) from None


def _load_known_hosts(config: EventsConfig) -> asyncssh.SSHKnownHosts:
    try:
        return asyncssh.read_known_hosts(str(config.known_hosts_file))
    except OSError as exc:
        raise ConfigError([("gerrit.events.known_hosts_file", f"cannot read: {exc.strerror}")]) from None
    except ValueError as exc:
        raise ConfigError([("gerrit.events.known_hosts_file", f"not a known_hosts file: {exc}")]) from None


class EventFollower:
    """One ``stream-events`` session per process, reconnecting with capped exponential backoff and full jitter."""

    def __init__(
        self,
        config: EventsConfig,
        cache: Invalidator,
        *,
        observer: StreamObserver | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        backlog: int = BACKLOG,
        settle: tuple[float, ...] = SETTLE,
    ) -> None:
        """Reads the key and ``known_hosts`` once now, so a deployment mistake fails at start (exit 2)."""
        load_client_key(config)
        _load_known_hosts(config)
        self._config = config
        self._cache = cache
        self._observer = observer or _NoObserver()
        self._rng = rng
        self._clock = clock
        self._backlog = backlog
        self._settle = settle
        self._again: dict[Invalidation, list[asyncio.TimerHandle]] = {}
        self._reapplying: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._outage = False
        #: Set while a stream is open (after the cache was cleared for it); for tests and health probes.
        self.connected = asyncio.Event()
        #: Times of the last event and the number of (re)connections, for metrics and tests.
        self.last_event: float | None = None
        self.connections = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gerrit-stream-events")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            self._cancel_again()
            return
        task.cancel()
        if self._conn is not None:
            self._conn.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._set_connected(False)
        self._cancel_again()

    def _cancel_again(self) -> None:
        for handles in self._again.values():
            for handle in handles:
                handle.cancel()
        self._again.clear()
        for pending in self._reapplying:
            pending.cancel()

    def _set_connected(self, up: bool) -> None:
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        self._observer.connected(up)

    async def _run(self) -> None:
        delay = self._config.backoff_initial
        while True:
            started = self._clock()
            try:
                await self._session()
                reason = "the stream ended"
            except asyncio.CancelledError:
                raise
            except asyncssh.HostKeyNotVerifiable as exc:
                reason = f"Gerrit's host key is not in {self._config.known_hosts_file} ({exc.reason})"
            except asyncssh.PermissionDenied:
                reason = f"SSH authentication as {self._config.username} was refused (is the key registered?)"
            except ConfigError as exc:
                reason = "; ".join(f"{key}: {why}" for key, why in exc.errors)
            except (OSError, asyncssh.Error) as exc:
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
            except Exception as exc:  # a bug here must not end freshness for the process's lifetime
                log.exception("gerrit events: unexpected error")
                reason = f"unexpected {type(exc).__name__}"
            self._conn = None
            self._set_connected(False)
            if self._clock() - started >= _STABLE:
                delay = self._config.backoff_initial
            if not self._outage:
                self._outage = True
                log.warning(
                    "gerrit events: stream from %s:%d down: %s; reconnecting with backoff, cached answers "
                    "expire on their TTLs meanwhile (health unaffected)",
                    self._config.host,
                    self._config.port,
                    reason,
                )
            else:
                log.debug("gerrit events: still down: %s", reason)
            await asyncio.sleep(delay * (0.5 + self._rng() / 2))
            delay = min(delay * 2, self._config.backoff_max)
            self._observer.reconnect()

    async def _session(self) -> None:
        cfg = self._config
        conn = await asyncio.wait_for(
            asyncssh.connect(
                cfg.host,
                cfg.port,
                username=cfg.username,
                client_keys=[load_client_key(cfg)],
                known_hosts=_load_known_hosts(cfg),
                agent_path=None,
                config=[],
                keepalive_interval=cfg.keepalive,
                keepalive_count_max=3,
            ),
            timeout=max(10.0, cfg.keepalive),
        )
        self._conn = conn
        async with conn:
            process = await conn.create_process(_COMMAND, stdin=asyncssh.DEVNULL, encoding=None)
            # Whatever was cached before may have missed events; answers fetched from now on are fresh.
            await self._cache.invalidate(everything=True)
            self.connections += 1
            self._set_connected(True)
            if self._outage:
                log.warning("gerrit events: stream from %s:%d restored; cache cleared", cfg.host, cfg.port)
            else:
                log.info("gerrit events: following stream-events on %s:%d", cfg.host, cfg.port)
            self._outage = False
            stdout: Any = process.stdout
            await self.follow(stdout.readline)
            status = process.exit_status
            error = (await process.stderr.read())[:300] if process.stderr is not None else b""
            if status:
                raise ConnectionError(f"stream-events exited {status}: {error.decode(errors='replace').strip()}")

    async def follow(self, readline: Callable[[], Awaitable[bytes]]) -> None:
        """Read lines until the stream ends, applying them from a bounded backlog (see the module docstring).
        Returns once every line read was applied; raises what applying raised (the session then ends)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        applier = asyncio.create_task(self._apply_queue(queue), name="gerrit-events-apply")
        reader = asyncio.current_task()

        def stop_reading(task: asyncio.Task[None]) -> None:
            # An applier that failed (the store cannot even be cleared) ends the session now, even on a quiet stream.
            if not task.cancelled() and task.exception() is not None and reader is not None:
                reader.cancel()

        applier.add_done_callback(stop_reading)
        try:
            while line := await readline():
                if queue.qsize() >= self._backlog:
                    discarded = 0
                    while not queue.empty():
                        discarded += queue.get_nowait() is not _OVERFLOW
                        queue.task_done()
                    log.warning("gerrit events: %d events behind; cache cleared instead", discarded + 1)
                    self._observer.dropped("backlog", discarded + 1)
                    queue.put_nowait(_OVERFLOW)
                else:
                    queue.put_nowait(line[:_MAX_LINE])
                self._observer.backlog(queue.qsize())
            queue.put_nowait(None)
            await applier
        except asyncio.CancelledError:
            if applier.done() and not applier.cancelled() and (failure := applier.exception()) is not None:
                if reader is not None:
                    reader.uncancel()  # our own cancel, not the caller's
                raise failure from None
            raise
        finally:
            applier.remove_done_callback(stop_reading)
            applier.cancel()
            self._observer.backlog(0)

    async def _apply_queue(self, queue: asyncio.Queue[bytes | None]) -> None:
        while (line := await queue.get()) is not None:
            if line is _OVERFLOW:
                await self._apply(Invalidation("everything"))
                self._apply_again_later(Invalidation("everything"))
            else:
                await self.handle_line(line)
            queue.task_done()
            self._observer.backlog(queue.qsize())

    async def handle_line(self, line: bytes | str) -> list[Invalidation]:
        """Apply one stream line. Returns what was invalidated.

        A line that cannot be read may have been an event that mattered (a cut-off long line, say), so it is
        logged and treated as a gap: everything cached is dropped. Never fatal.
        """
        if not line.strip():
            return []
        try:
            event = parse_line(line)
        except MalformedEvent as exc:
            log.warning("gerrit events: a malformed line (%d bytes), cache cleared: %s", len(line), exc)
            todo = [Invalidation("everything")]
        else:
            self.last_event = self._clock()
            kind = event_type(event)
            self._observer.event(kind or "(none)")
            if kind == DROPPED_OUTPUT:
                log.warning("gerrit events: Gerrit dropped events for this reader; cache cleared")
                self._observer.dropped("gerrit", 1)
            todo = invalidations(event)
        for item in todo:
            await self._apply(item)
            self._apply_again_later(item)
        return todo

    def _apply_again_later(self, item: Invalidation) -> None:
        if not self._settle:
            return
        for handle in self._again.pop(item, []):
            handle.cancel()  # postponed: the re-applications scheduled below cover this window too
        if len(self._again) >= MAX_PENDING:
            self._cancel_again()
            item = Invalidation("everything")
        loop = asyncio.get_running_loop()
        last = len(self._settle) - 1
        self._again[item] = [
            loop.call_later(delay, self._start_again, item, i == last) for i, delay in enumerate(self._settle)
        ]

    def _start_again(self, item: Invalidation, last: bool) -> None:
        if last:
            self._again.pop(item, None)
        task = asyncio.create_task(self._apply_again(item), name="gerrit-events-settle")
        self._reapplying.add(task)
        task.add_done_callback(self._reapplying.discard)

    async def _apply_again(self, item: Invalidation) -> None:
        try:
            await self._apply(item, observe=False)
        except Exception:  # the store cannot even be cleared: end the session; the reconnect clears the cache
            log.exception("gerrit events: applying %s %s again failed; reconnecting", item.kind, item.key)
            if self._conn is not None:
                self._conn.abort()

    async def _apply(self, item: Invalidation, *, observe: bool = True) -> None:
        try:
            target: dict[str, Any] = {"everything": True} if item.kind == "everything" else {item.kind: item.key}
            await self._cache.invalidate(**target)
        except Exception:
            # What could not be dropped must not outlive its event: drop everything instead. If the store cannot
            # do that either, end the session; the reconnect clears the cache before following again.
            log.exception("gerrit events: invalidating %s %s failed; clearing the cache", item.kind, item.key)
            await self._cache.invalidate(everything=True)
        if observe:
            self._observer.invalidation(item.kind)
