"""What following the real Gerrit's event stream needs, provisioned through REST on the session's Gerrit.

`provision_events(gerrit, workdir)`:
  - an ed25519 SSH key for `authz-bot` (and one for `admin`, to run `gerrit close-connection`), keys on disk
  - global capability `streamEvents` for `authz-service` (without it: "not permitted: stream events")
  - Read on All-Projects `refs/meta/config` for `authz-service`: Gerrit filters the stream by ref visibility,
    so without it no access change reaches the bot
  - Read on All-Users `refs/groups/*` and `refs/users/*`: group and account changes, likewise
  - `known_hosts` with the site's host keys
Calling it again on the same site re-adds the same key (Gerrit keeps duplicates harmlessly).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncssh
import httpx

from .gerrit import GerritServer
from .gerrit_provision import GerritFixture, Rest

__all__ = ["EventsSetup", "close_connections", "provision_events", "ssh_run"]


@dataclass(frozen=True)
class EventsSetup:
    ssh_url: str  # ssh://authz-bot@127.0.0.1:PORT
    private_key_file: Path
    known_hosts_file: Path
    admin_key_file: Path
    port: int

    def config(self) -> dict[str, str]:
        """The `gerrit.events` section for this Gerrit."""
        return {
            "ssh_url": self.ssh_url,
            "private_key_file": str(self.private_key_file),
            "known_hosts_file": str(self.known_hosts_file),
        }


def _add_key(server: GerritServer, account: str, key_file: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{account}@gerrit-authz-tests")
    key.write_private_key(str(key_file))
    key_file.chmod(0o600)
    public = key.export_public_key().decode()
    with httpx.Client(base_url=server.url + "a/", auth=server.admin_auth, timeout=60.0) as client:
        resp = client.post(
            f"accounts/{quote(account, safe='')}/sshkeys", content=public, headers={"content-type": "text/plain"}
        )
        if resp.status_code >= 400:
            raise RuntimeError(f"adding an SSH key for {account}: {resp.status_code} {resp.text[:300]}")


def provision_events(gerrit: GerritFixture, workdir: Path) -> EventsSetup:
    server, org = gerrit.server, gerrit.org
    workdir.mkdir(parents=True, exist_ok=True)
    bot_key, admin_key = workdir / "authz-bot.key", workdir / "admin.key"
    _add_key(server, org.bot.username, bot_key)
    _add_key(server, org.admin.username, admin_key)
    rest = Rest(server.url, server.admin_auth)
    try:
        rule = {org.authz_service: {"action": "ALLOW"}}
        rest.post(
            "projects/All-Projects/access",
            {
                "add": {
                    "GLOBAL_CAPABILITIES": {"permissions": {"streamEvents": {"rules": rule}}},
                    "refs/meta/config": {"permissions": {"read": {"rules": rule}}},
                }
            },
        )
        read = {"permissions": {"read": {"rules": rule}}}
        rest.post("projects/All-Users/access", {"add": {"refs/groups/*": read, "refs/users/*": read}})
    finally:
        rest.close()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(server.known_hosts())
    return EventsSetup(
        ssh_url=f"ssh://{org.bot.username}@127.0.0.1:{server.ssh_port}",
        private_key_file=bot_key,
        known_hosts_file=known_hosts,
        admin_key_file=admin_key,
        port=server.ssh_port,
    )


async def ssh_run(setup: EventsSetup, username: str, key_file: Path, command: str) -> str:
    """Run one Gerrit SSH command; its stdout."""
    async with asyncssh.connect(
        "127.0.0.1",
        setup.port,
        username=username,
        client_keys=[str(key_file)],
        known_hosts=str(setup.known_hosts_file),
        agent_path=None,
        config=[],
    ) as conn:
        done = await asyncio.wait_for(conn.run(command, check=True), 30)
        return str(done.stdout)


async def close_connections(setup: EventsSetup, username: str) -> tuple[list[str], str]:
    """`gerrit close-connection` (as admin, from Gerrit's side) for every SSH session of `username`; the
    sessions closed and the `show-connections` listing they were found in."""
    listing = await ssh_run(setup, "admin", setup.admin_key_file, "gerrit show-connections --wide")
    sessions = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 2 and re.fullmatch(r"[0-9a-f]{1,16}", fields[0]) and username in fields[1:]:
            sessions.append(fields[0])
    if sessions:
        await ssh_run(setup, "admin", setup.admin_key_file, "gerrit close-connection " + " ".join(sessions))
    return sessions, listing
