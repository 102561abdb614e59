"""Rotating secrets: SecretFile re-reads on a change of the file and on demand; the Gerrit client re-reads once on a
401 and retries once (``httpx.MockTransport`` playing Gerrit); the credential-cache key is not the password."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest

from authz_server._app import credential_key
from authz_server._deadline import Deadline
from authz_server._gerrit import GerritClient, make_http_client
from authz_server._opstats import RotationStats
from authz_server._secrets import SecretFile
from authz_server.config import Config, parse_config
from authz_server.errors import ConfigError, Unavailable


def test_secret_file_follows_an_atomic_replace_and_survives_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("one\n")
    stats = RotationStats()
    secret = SecretFile(path, stats=stats)
    assert secret.get() == "one"
    assert stats.rereads == 0  # unchanged file: no read per call
    tmp = tmp_path / "pw.new"
    tmp.write_text("two\n")
    os.replace(tmp, path)
    assert secret.get() == "two" and stats.changes == 1
    path.unlink()  # mid-rotation
    assert secret.get() == "two"
    assert "two" not in repr(secret)


def test_secret_file_refresh_reads_even_when_the_stat_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("aaaa")
    secret = SecretFile(path)
    before = path.stat()
    path.write_text("bbbb")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert secret.get() == "aaaa"  # nothing visible changed
    assert secret.refresh() is True and secret.get() == "bbbb"
    assert secret.refresh() is False


def test_unreadable_or_empty_secret_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        SecretFile(tmp_path / "missing")
    assert exc.value.errors[0][0] == "gerrit.password_file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError):
        SecretFile(tmp_path / "empty")


def _auth(request: httpx.Request) -> str:
    return base64.b64decode(request.headers["authorization"].split()[1]).decode()


class RotatedGerrit:
    """Accepts only ``password`` for the service account."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(_auth(request))
        if _auth(request) != f"bot:{self.password}":
            return httpx.Response(401, text="Unauthorized")
        return httpx.Response(200, content=b")]}'\n" + json.dumps({"p": {}}).encode())


async def test_401_rereads_the_file_once_and_retries_once(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("old-pass")
    gerrit = RotatedGerrit("old-pass")
    stats = RotationStats()
    http = make_http_client(transport=httpx.MockTransport(gerrit))
    client = GerritClient("http://gerrit", "bot", SecretFile(path, stats=stats), http, timeout=2, stats=stats)
    assert (await client.capabilities(1, Deadline.after(5))).value == frozenset()
    # Gerrit rotated and the file followed, but keeping its identity: only the 401 can tell.
    gerrit.password = "new-pass"
    before = path.stat()
    path.write_text("new-pass")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    gerrit.seen.clear()
    assert (await client.capabilities(1, Deadline.after(5))).value == frozenset()
    assert gerrit.seen == ["bot:old-pass", "bot:new-pass"] and stats.auth_retries == 1
    # Gerrit rotated again, the file did not follow: one request, one re-read, no retry, never a loop.
    gerrit.password = "newer-pass"
    gerrit.seen.clear()
    with pytest.raises(Unavailable) as exc:
        await client.capabilities(1, Deadline.after(5))
    assert exc.value.code == "gerrit_auth_failed"
    assert gerrit.seen == ["bot:new-pass"] and stats.auth_retries == 1
    await http.aclose()


def _config(tmp_path: Path, **cache: str) -> Config:
    return parse_config(
        {
            "gerrit": {"url": "http://g", "username": "u", "password_env": "X"},
            "cache": cache,
            "rules": [{"name": "r", "require": "anyone"}],
        }
    )


def test_credential_key_comes_from_its_own_file_or_is_random_per_process(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("shared-by-replicas\n")
    shared = _config(tmp_path, credential_key_file=str(key_file))
    assert credential_key(shared) == credential_key(shared)
    alone = _config(tmp_path)
    assert credential_key(alone) != credential_key(alone)
    with pytest.raises(ConfigError) as exc:
        credential_key(_config(tmp_path, credential_key_file=str(tmp_path / "nope")))
    assert exc.value.errors[0][0] == "cache.credential_key_file"
