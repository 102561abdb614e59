"""docs/reference.md stays complete: every config key, requirement kind, error code, metric and CLI command."""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from authz_server._metrics import Metrics, StreamMetrics
from authz_server._opstats import ReloadStats, RotationStats
from authz_server._requirements import KINDS
from authz_server.cli import _parser
from authz_server.config import Config
from authz_server.errors import STATUS

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference.md"
# A code is the first argument of an error constructor, e.g. Unavailable("gerrit_timeout", ...).
_RAISED_CODE = re.compile(r"\b(?:BadRequest|Unauthenticated|PermissionDenied|Unavailable|AuthzError)\(\s*\"([a-z_]+)\"")


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The pydantic models inside a field's annotation, each with whether it sits inside a list."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
    elif origin in (list, tuple, set, frozenset):
        for arg in typing.get_args(annotation):
            for model, _ in _models_in(arg):
                yield model, True
    elif origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """Every key path of the configuration, lists written ``key[]`` (``rules[].match.path``)."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        models = list(_models_in(field.annotation))
        in_list = any(listed for _, listed in models)
        yield path
        for sub, _ in models:
            yield from config_keys(sub, f"{path}[]" if in_list else path)


def documented() -> set[str]:
    """Every `code span` of the reference (a key is documented when it is one, exactly)."""
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing")
    return set(re.findall(r"`([^`\n]+)`", REFERENCE.read_text()))


def test_the_walk_finds_nested_and_listed_keys() -> None:
    keys = set(config_keys())
    assert {"server.listen", "identity[].jwt.issuer", "rules[].match.path", "cache.ttl.account"} <= keys
    assert "identity" in keys and "rules[].require" in keys


def test_every_config_key_is_documented() -> None:
    spans = documented()
    missing = [key for key in config_keys() if key not in spans]
    assert not missing, f"docs/reference.md does not document: {missing}"


def test_every_requirement_kind_is_documented() -> None:
    section = REFERENCE.read_text().split("## Requirements", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert {"anyone", "authenticated", *KINDS} <= rows, sorted({"anyone", "authenticated", *KINDS} - rows)


def test_every_error_family_and_code_is_documented() -> None:
    spans = documented()
    assert set(STATUS) <= spans, sorted(set(STATUS) - spans)
    codes = {m for path in (REPO / "authz_server").rglob("*.py") for m in _RAISED_CODE.findall(path.read_text())}
    assert len(codes) >= 10, codes  # the scan itself works
    assert codes <= spans, f"error codes not in docs/reference.md: {sorted(codes - spans)}"


def test_every_metric_is_documented() -> None:
    spans = documented()
    names = set()
    metrics = Metrics()
    StreamMetrics(metrics.registry)
    metrics.track_operations(RotationStats(), ReloadStats())
    for family in metrics.registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    assert names, "no metrics registered"
    assert names <= spans, f"metrics not in docs/reference.md: {sorted(names - spans)}"


def test_every_cli_command_is_documented() -> None:
    text = REFERENCE.read_text()
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in [*sub.choices, "--version"]:
        assert f"`gerrit-authz {command}" in text, f"CLI command {command} not in docs/reference.md"
