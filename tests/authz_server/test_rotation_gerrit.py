"""Rotating the service account's HTTP password against the real Gerrit, with no restart of gerrit-authz.

The session's Gerrit is shared by every test, so the rotation uses a dedicated service account (same group, same
capabilities as authz-bot) that is disabled afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support.authz import basic, check_request, check_stub, make_config, running_server
from _support.gerrit_provision import GerritFixture, Rest

pytestmark = pytest.mark.gerrit

NO_CACHE = {"ttl": {k: "0s" for k in ("account", "groups", "access", "change", "negative")}}
FILE_SIZE = 128  # the secret is stripped, so padding keeps the file's size fixed across rotations


@pytest.fixture
def rotating_bot(gerrit: GerritFixture) -> Iterator[tuple[str, str, Rest]]:
    """(username, password, admin REST client) of a fresh service account in the authz-service group."""
    admin = Rest(gerrit.server.url, gerrit.org.admin.auth)
    username = f"rotating-bot-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    info = admin.put(f"accounts/{username}", {"name": username, "http_password": password})
    admin.post(f"groups/{gerrit.org.authz_service}/members.add", {"members": [username]})
    try:
        yield username, password, admin
    finally:
        admin.post(f"groups/{gerrit.org.authz_service}/members.delete", {"members": [username]})
        admin.call("DELETE", f"accounts/{info['_account_id']}/active", accept=(409,))
        admin.close()


def rotate(url: str, username: str, password: str) -> str:
    """What an operator's rotation job does: Gerrit generates a new HTTP password for the account itself."""
    rest = Rest(url, (username, password))
    try:
        new = rest.put("accounts/self/password.http", {"generate": True})
    finally:
        rest.close()
    assert isinstance(new, str) and new and new != password
    return new


def write_secret(path: Path, value: str, *, keep_identity: bool = False) -> None:
    """Write in place; with ``keep_identity`` the inode, size and mtime stay as they were (a stat sees nothing)."""
    before = path.stat() if keep_identity else None
    with path.open("r+" if path.exists() else "w") as f:
        f.write(value.ljust(FILE_SIZE - 1) + "\n")
    if before is not None:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


async def test_rotated_password_reaches_cold_lookups_without_restart(
    gerrit: GerritFixture, rotating_bot: tuple[str, str, Rest], tmp_path: Path
) -> None:
    username, password, _ = rotating_bot
    secret_file = tmp_path / "gerrit-password"
    write_secret(secret_file, password)
    config = make_config(
        gerrit.server.url,
        secret_file,
        identity=[{"gerrit_http_credentials": {}}],
        cache=NO_CACHE,
        gerrit={"username": username},
    )
    alice = gerrit.org.alice
    request = check_request(
        "GET", "/artifacts/platform%2Fbuild/-/main/out/app.tar", {"authorization": basic(*alice.auth)}
    )

    async def code() -> tuple[int, str]:
        response: Any = await stub.Check(request, timeout=10)
        return response.status.code, response.status.message

    async with running_server(config) as app, check_stub(app.address) as stub:
        stats = app.components.stats
        assert await code() == (0, "")  # check.access as the rotating account, cold (nothing is cached)

        # 1. Gerrit rotates first; until the file follows, the service account is refused: 503, never an allow.
        password = rotate(gerrit.server.url, username, password)
        assert await code() == (14, "gerrit_auth_failed")
        write_secret(secret_file, password)  # the Secret reaches the pod a little later
        assert await code() == (0, "")
        assert stats.changes == 1 and stats.auth_retries == 0

        # 2. The file is updated without a visible change of identity (same inode, size and mtime): the 401 from
        #    Gerrit makes it re-read the file once and retry the request once.
        password = rotate(gerrit.server.url, username, password)
        write_secret(secret_file, password, keep_identity=True)
        assert await code() == (0, "")
        assert stats.auth_retries == 1 and stats.changes == 2

        # 3. A stale file on a 401 is one re-read and no retry loop: still a 503, and the counter says no retry.
        password = rotate(gerrit.server.url, username, password)
        rereads = stats.rereads
        assert await code() == (14, "gerrit_auth_failed")
        assert stats.auth_retries == 1 and stats.rereads == rereads + 1
