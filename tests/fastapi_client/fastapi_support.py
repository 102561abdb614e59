"""Helpers for the fastapi_client tests: ASGI clients, lifespan, a real uvicorn on loopback, the example app."""

from __future__ import annotations

import asyncio
import importlib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import httpx
import uvicorn
from _support.tls import TestCA
from starlette.types import ASGIApp, Message

from fastapi_client import AuthzMiddleware
from fastapi_client.uvicorn_tls import TlsH11Protocol

CLIENT = ("203.0.113.7", 51234)


def example_module() -> ModuleType:
    """``examples/fastapi_app/app.py`` (conftest.py puts the repository root on ``sys.path``)."""
    return importlib.import_module("examples.fastapi_app.app")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def asgi_client(app: ASGIApp, base_url: str = "http://svc.example:8080") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def middleware_of(app: Any) -> AuthzMiddleware:
    """The AuthzMiddleware instance in a Starlette app's built middleware stack."""
    layer = app.middleware_stack
    assert layer is not None, "the app has not handled a request yet"
    while not isinstance(layer, AuthzMiddleware):
        layer = layer.app
    return layer


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[list[Message]]:
    """Run the ASGI lifespan protocol around the block, as a server would; yields the messages the app sent."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    started = asyncio.Event()
    done = asyncio.Event()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            started.set()
        if message["type"].startswith("lifespan.shutdown."):
            done.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield sent
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def uvicorn_server(app: ASGIApp, pki: TestCA | None = None) -> AsyncIterator[str]:
    """A real uvicorn on a free loopback port, on the running loop; yields ``http://127.0.0.1:PORT``.

    With ``pki``: HTTPS with a certificate from that CA, client certificates from it verified when offered
    (``CERT_OPTIONAL``) and exposed to the app by :class:`TlsH11Protocol`; yields ``https://127.0.0.1:PORT``."""
    options: dict[str, Any] = {}
    if pki is not None:
        server_cert = pki.issue("uvicorn-server", server=True)
        options = {
            "http": TlsH11Protocol,
            "ssl_certfile": str(server_cert.cert),
            "ssl_keyfile": str(server_cert.key),
            "ssl_ca_certs": str(pki.cert),
            "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        }
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="websockets-sansio", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"{'https' if pki else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
