"""Fixtures for the authz_server unit tests: factory fixtures over :mod:`_support.factories`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from _support.factories import FakeFacts, make_check_request, make_input
from _support.http_double import serve_handler
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from authz_server._input import CheckInput

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


@pytest.fixture
def example_config_path() -> Path:
    """The repository's example configuration, ``examples/config.yaml``."""
    if not EXAMPLE_CONFIG.is_file():
        pytest.fail(f"example configuration not found at {EXAMPLE_CONFIG}")
    return EXAMPLE_CONFIG


@pytest.fixture
def check_request() -> Callable[..., CheckRequest]:
    """``check_request(method, path, headers, **kw)`` → a real Envoy ``CheckRequest``."""
    return make_check_request


@pytest.fixture
def check_input() -> Callable[..., CheckInput]:
    """``check_input(method, path, headers, **kw)`` → the parsed :class:`CheckInput`."""
    return make_input


@pytest.fixture
def fake_facts() -> Callable[..., FakeFacts]:
    """``fake_facts(**dicts)`` → a fresh :class:`FakeFacts`."""

    def factory(**kwargs: Any) -> FakeFacts:
        return FakeFacts(**kwargs)

    return factory


# --------------------------------------------------------------------------------------------------------
# A real loopback Gerrit that answers every account lookup slowly (1.5 s) and positively (alice), so that a
# Check is still in flight when the test sends SIGTERM or reloads the config.
# --------------------------------------------------------------------------------------------------------


class _LazyGerrit(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(1.5)
        body = b')]}\'\n{"_account_id": 1000002, "username": "alice", "email": "alice@example.com"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lazy_gerrit() -> Iterator[str]:
    with serve_handler(_LazyGerrit) as url:
        yield url
