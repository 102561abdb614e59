"""Reload without restart: the running :class:`Components` swapped atomically for ones built from a new file.

A Check takes one snapshot (the current :class:`Authorizer`, which holds its policy, identity sources and Gerrit
client) when it starts and uses only that, so Checks in flight finish on the configuration they started with and
new ones see only the new one. The new file is validated by :func:`load_config`, the same function
``check-config`` runs; an invalid file changes nothing but a log line per error and a failure count.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from ._app import Components, build_components, gerrit_trust, new_store
from ._caller_trust import caller_trust_errors
from ._deadline import Deadline
from ._engine import Decision
from ._input import CheckInput
from ._opstats import ReloadStats
from .config import Config, load_config
from .errors import ConfigError

__all__ = ["LiveRuntime", "Reloader", "needs_restart"]

log = logging.getLogger("gerrit_authz.reload")

# Server keys read once when the listeners and servicers are built.
_RESTART_KEYS = (
    "listen",
    "admin_listen",
    "metrics_listen",
    "reflection",
    "check_timeout",
    "retry_after",
    "outages",
    "shutdown_grace",
    "config_watch_interval",
    "tls",
    "admin_tls",
    "caller_authentication",
    "workers",
    "worker_port_base",
)
# What the caller-trust rule reads: until a restart, the running listeners' settings, not the new file's.
_LISTENER_KEYS = ("listen", "admin_listen", "tls", "admin_tls", "caller_authentication")


def running_trust_errors(running: Config, new: Config) -> list[tuple[str, str]]:
    """The caller-trust rule for ``new`` on the listeners that are actually running (built from ``running``):
    a reload cannot enable ``mtls``/``envoy_jwt_metadata`` by claiming a loopback listener it does not have."""
    server = new.server.model_copy(update={k: getattr(running.server, k) for k in _LISTENER_KEYS})
    return caller_trust_errors(new.model_copy(update={"server": server}))


def needs_restart(old: Config, new: Config) -> list[str]:
    """The keys that differ but only take effect after a restart: listener settings, and the event stream (one
    SSH session for the process's lifetime; its key file is re-read at every connection anyway)."""
    keys = [f"server.{k}" for k in _RESTART_KEYS if getattr(old.server, k) != getattr(new.server, k)]
    if old.gerrit.events != new.gerrit.events:
        keys.append("gerrit.events")
    if old.telemetry != new.telemetry:
        keys.append("telemetry")
    return keys


def _same_gerrit(old: Config, new: Config) -> bool:
    return (old.gerrit.url.rstrip("/"), old.gerrit.username) == (new.gerrit.url.rstrip("/"), new.gerrit.username)


def _same_store(old: Config, new: Config) -> bool:
    keep: tuple[str, ...] = ("backend", "redis_url", "namespace", "max_entries")
    keep += ("redis_ca_file", "redis_username", "redis_password_file", "redis_password_env")
    return all(getattr(old.cache, k) == getattr(new.cache, k) for k in keep)


class LiveRuntime:
    """The current components, behind the two things the servicers use: ``decide`` and ``invalidate``."""

    def __init__(self, components: Components, *, retire_after: float = 10.0) -> None:
        self._current = components
        self._retire_after = retire_after
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def components(self) -> Components:
        return self._current

    async def decide(self, inp: CheckInput, deadline: Deadline, decision_id: str | None = None) -> Decision:
        authorizer = self._current.authorizer  # the one snapshot this Check uses
        return await authorizer.decide(inp, deadline, decision_id)

    async def invalidate(
        self,
        *,
        account: str | None = None,
        project: str | None = None,
        group: str | None = None,
        change: str | None = None,
        everything: bool = False,
    ) -> int:
        return await self._current.cache.invalidate(
            account=account, project=project, group=group, change=change, everything=everything
        )

    async def apply(self, config: Config) -> Components:
        """Build components for ``config``, keeping what may be kept, and swap them in."""
        old = self._current
        same_gerrit = _same_gerrit(old.config, config)
        same_http = same_gerrit and gerrit_trust(old.config) == gerrit_trust(config)
        keep_store = same_gerrit and _same_store(old.config, config)
        store = old.store if keep_store else None
        if store is None:
            store = new_store(config)
            if not same_gerrit and config.cache.backend == "redis":
                await store.bump_all()  # answers about another Gerrit (or for another account) are not ours
        key = old.credential_key if old.config.cache.credential_key_file == config.cache.credential_key_file else None
        new = build_components(
            config,
            # A kept store keeps its generations: an invalidation through the new cache also keeps the old one,
            # still finishing its Checks, from storing or serving what it fetched before.
            store=store,
            http=old.http if same_http else None,
            key=key,
            stats=old.stats,
            tracing=old.tracing,
        )
        self._current = new
        if not (same_http and keep_store) or old.idp_http:
            self._retire(old, close_http=not same_http, close_store=not keep_store)
        return new

    def _retire(self, old: Components, *, close_http: bool, close_store: bool) -> None:
        """Close what the new components do not share, once Checks in flight on the old ones are done."""

        async def later() -> None:
            await asyncio.sleep(self._retire_after)
            if close_http:
                await old.http.aclose()
            for client in old.idp_http:  # never shared with the new components
                await client.aclose()
            if close_store:
                await old.store.close()

        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await self._current.aclose()


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None  # mid-replace, or gone: keep watching, keep running


class Reloader:
    """Reloads on SIGHUP and when the file's content changes (polled; works for atomic replaces and symlink swaps)."""

    def __init__(
        self,
        path: str | Path,
        runtime: LiveRuntime,
        stats: ReloadStats,
        *,
        interval: float,
        load: Callable[[Path], Config] = load_config,
    ) -> None:
        self._path = Path(path)
        self._runtime = runtime
        self._stats = stats
        self._interval = interval
        self._load = load
        self._seen = _digest(self._path)
        self._started = runtime.components.config  # what the listeners were built from
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        if self._interval > 0:
            self._task = loop.create_task(self._watch())

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            digest = _digest(self._path)
            if digest is not None and digest != self._seen:
                await self.reload("file changed")

    async def reload(self, why: str) -> bool:
        """Validate the file and swap it in; True when applied. Never raises: a bad file keeps the running one."""
        async with self._lock:
            self._seen = _digest(self._path)  # a bad file is reported once, not at every poll
            try:
                # Parsing and validating takes tens of milliseconds (pure-Python YAML): off the event loop, so
                # Checks keep being answered meanwhile.
                config = await asyncio.to_thread(self._load, self._path)
                if trust := running_trust_errors(self._started, config):
                    raise ConfigError(trust)
                await self._runtime.apply(config)
            except ConfigError as exc:
                self._stats.failures += 1
                log.error("reload (%s) refused, the running configuration stays: %s is invalid", why, self._path)
                for key, reason in exc.errors:
                    log.error("  %s: %s", key, reason)
                return False
            except Exception:
                self._stats.failures += 1
                log.exception("reload (%s) failed, the running configuration stays", why)
                return False
            self._stats.successes += 1
            self._stats.last_success = time.time()
            for key in needs_restart(self._started, config):
                log.warning("reload: %s changed; it needs a restart to take effect", key)
            log.info("reload (%s): applied %s (%d rules)", why, self._path, len(config.rules))
            return True
