"""One ``grpc.aio`` channel per event loop, created on first use and reused by every request on that loop.

A grpc.aio channel belongs to the loop it was created on; using it from another loop fails or hangs. Test suites
(one loop per test), Starlette's ``TestClient`` (its own loop in a thread) and multi-threaded hosts all call one
middleware instance from several loops, so channels are keyed by the running loop, never shared between loops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from ._service_tls import ServiceTls

__all__ = ["CHECK_METHOD", "DEFAULT_CHANNEL_OPTIONS", "ChannelPool"]

log = logging.getLogger("fastapi_client.authz")

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"

#: gRPC's default reconnect backoff grows to 120 s, and while a channel backs off every call fails at once with
#: UNAVAILABLE: a restarted gerrit-authz would keep answering 503 for minutes. Cap it at a couple of seconds.
#: Retries are off: gRPC's retry machinery buffers every call and costs about a third of the client's CPU per
#: Check (measured: ~120 µs instead of ~170 µs per call); a Check that fails is a 503 with retry-after anyway.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
)

CheckCall = grpc.aio.UnaryUnaryMultiCallable[CheckRequest, CheckResponse]


class _Entry:
    __slots__ = ("call", "channel", "loop", "next_look", "stamp")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        channel: grpc.aio.Channel,
        call: CheckCall,
        stamp: tuple[object, ...] = (),
        next_look: float = float("inf"),
    ) -> None:
        # A weak reference: a finished loop (a test's) must not be kept alive by its channel entry.
        self.loop = weakref.ref(loop)
        self.channel = channel
        self.call = call
        self.stamp = stamp  # the TLS files' identities the channel's credentials were read from
        self.next_look = next_look  # loop time at which to look at them again


class ChannelPool:
    """The channels of one middleware instance, one per event loop."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        tls: ServiceTls | None = None,
        close_grace: float = 5.0,
    ) -> None:
        if tls is not None and credentials is not None:
            raise ValueError("pass either tls or credentials, not both")
        self.target = target
        self._credentials = credentials
        self._tls = tls
        self._close_grace = close_grace
        self._closing: set[asyncio.Task[None]] = set()
        self.rotations = 0
        self._options = list(options) + (tls.channel_options() if tls is not None else [])
        self._entries: dict[int, _Entry] = {}
        # Channels are created on the loop's own thread, but several threads may each run a loop.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self) -> CheckCall:
        """The ``Authorization/Check`` callable for the running loop (creating its channel on first use)."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry.loop() is loop:
            if self._tls is not None and loop.time() >= entry.next_look:
                return self._look_at_files(loop, entry)
            return entry.call
        return self._create(loop)

    def _look_at_files(self, loop: asyncio.AbstractEventLoop, entry: _Entry) -> CheckCall:
        """Rotation: a new channel when the TLS files changed and read well; the old one drains, then closes."""
        assert self._tls is not None
        entry.next_look = loop.time() + self._tls.check_interval
        if self._tls.stamp() == entry.stamp:
            return entry.call
        try:
            call = self._create(loop)
        except (OSError, ValueError) as exc:
            # Mid-rotation (a file missing, the key not matching yet): keep the working channel, look again later.
            log.warning("TLS files for %s not usable yet (%s); keeping the current channel", self.target, exc)
            return entry.call
        self.rotations += 1
        task = loop.create_task(entry.channel.close(grace=self._close_grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return call

    def channel(self) -> grpc.aio.Channel | None:
        """The running loop's channel, if one was created."""
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        return entry.channel if entry is not None and entry.loop() is loop else None

    def _create(self, loop: asyncio.AbstractEventLoop) -> CheckCall:
        with self._lock:
            self._prune()
            stamp: tuple[object, ...] = ()
            next_look = float("inf")
            if self._tls is not None:
                stamp = self._tls.stamp()  # before reading: a change made meanwhile is seen next time
                credentials = self._tls.credentials()
                next_look = loop.time() + self._tls.check_interval
                channel = grpc.aio.secure_channel(self.target, credentials, options=self._options)
            elif self._credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            call: CheckCall = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
                # As generated stubs do since grpcio 1.63: the method is registered once with the channel
                # instead of being looked up on every call (measurably cheaper per Check).
                _registered_method=True,  # type: ignore[call-arg]
            )
            self._entries[id(loop)] = _Entry(loop, channel, call, stamp, next_look)
            return call

    def _prune(self) -> None:
        # Entries of loops that are gone or closed cannot be closed gracefully any more (that needs their loop);
        # dropping them lets grpc release the channel. Also catches a new loop reusing a dead loop's id().
        for key, entry in list(self._entries.items()):
            loop = entry.loop()
            if loop is None or loop.is_closed():
                del self._entries[key]

    async def close(self) -> None:
        """Close the running loop's channel (lifespan shutdown); the next request opens a new one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.get(id(loop))
            if entry is None or entry.loop() is not loop:
                return
            del self._entries[id(loop)]
        await entry.channel.close()
