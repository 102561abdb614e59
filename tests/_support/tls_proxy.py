"""A TLS-terminating TCP forwarder: puts a plaintext server (the test Gerrit) behind HTTPS with a certificate from
a test CA, the way a company's Gerrit sits behind its load balancer. Bytes are copied unchanged both ways; it runs
its own event loop in a daemon thread on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path

from _support.tls import CertFiles

__all__ = ["TlsForwarder"]


class TlsForwarder:
    """``https://127.0.0.1:PORT`` (certificate ``server``) forwarding to ``target`` (``HOST:PORT``); with
    ``client_ca``, only clients presenting a certificate from that CA get through."""

    def __init__(self, server: CertFiles, target: str, *, client_ca: Path | None = None) -> None:
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(str(server.cert), str(server.key))
        if client_ca is not None:  # clients must present a certificate from this CA
            self._ctx.load_verify_locations(cafile=str(client_ca))
            self._ctx.verify_mode = ssl.CERT_REQUIRED
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.handshakes = 0
        self.failed_handshakes = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _handshake_failed(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # A client refusing our certificate surfaces here (as an SSL error of the transport): count it, quietly.
        self.failed_handshakes += 1

    def start(self) -> TlsForwarder:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self._ctx)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.set_exception_handler(self._handshake_failed)
        self._loop.run_until_complete(serve())
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-forwarder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> TlsForwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
