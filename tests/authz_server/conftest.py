"""Fixtures for the authz_server unit tests: factory fixtures over :mod:`_support.factories`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _support.factories import FakeFacts, make_check_request, make_input
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
