"""A Gerrit that trickles or stalls: the Check answers 503 within its budget, never late and never an allow.

The Gerrit here is a real loopback HTTP server: it accepts the connection and sends its headers, then one body
byte a second (trickling) or nothing at all (stalled). httpx's own timeouts bound each read, so only the total
bound on every Gerrit call keeps the Check inside its budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from _support.authz import basic, check_request, check_stub, make_config, running_server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n)")
        for _ in range(100):
            await writer.drain()
            await asyncio.sleep(1.0)
            writer.write(b" ")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read(1)
        await asyncio.sleep(60)
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def slow_gerrit(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    handler: Handler = request.param
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    server.close()


@pytest.mark.parametrize("slow_gerrit", [trickle, stall], indirect=True, ids=["trickling", "stalled"])
@pytest.mark.parametrize("caller_deadline", [None, 0.6], ids=["check_timeout", "grpc-deadline"])
async def test_slow_gerrit_is_a_timely_503(slow_gerrit: str, caller_deadline: float | None, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("svc-password")
    config = make_config(
        slow_gerrit,
        secret,
        identity=[{"gerrit_http_credentials": {}}],
        server={"check_timeout": "1s"},
        gerrit={"timeout": "5s"},  # longer than the budget: the budget must win
    )
    async with running_server(config) as app, check_stub(app.address) as stub:
        started = time.monotonic()
        call = stub.Check(
            check_request("GET", "/dashboard", {"authorization": basic("bob", "pw")}), timeout=caller_deadline
        )
        resp = await asyncio.wait_for(call, 10)  # the test's own bound; the budget under test is far shorter
        elapsed = time.monotonic() - started

    assert resp.error_response.status.code == 503
    assert json.loads(resp.error_response.body)["error"] in ("gerrit_timeout", "deadline_exceeded")
    budget = caller_deadline if caller_deadline is not None else 1.0
    assert elapsed < budget + 0.5  # answered within the budget (plus scheduling slack), not after Gerrit's 5 s
