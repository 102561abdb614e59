"""Record real `gerrit stream-events` lines into tests/data/gerrit_events.jsonl.

Starts a throw-away Gerrit (tests/_support/gerrit.py), provisions the demo organisation and the stream's service
account, follows the stream as `authz-bot` while making the changes the event mapping cares about (group
membership, access rights of a project and of All-Projects, votes, merge, abandon, restore, private and WIP state,
an account's name), and writes every line received, unchanged, one per line.

    .venv/bin/python scripts/record_gerrit_events.py [OUTPUT]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import asyncssh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _support.gerrit import GerritServer  # noqa: E402
from _support.gerrit_events import provision_events  # noqa: E402
from _support.gerrit_provision import GerritFixture, Rest, provision  # noqa: E402


def _changes(rest: Rest, fixture: GerritFixture) -> None:
    org = fixture.org
    project = org.build_project
    read = {"permissions": {"read": {"rules": {org.build_devs: {"action": "BLOCK"}}}}}
    rest.post(f"projects/{project.replace('/', '%2F')}/access", {"add": {"refs/heads/record/*": read}})
    rest.post("projects/All-Projects/access", {"add": {"refs/heads/record/*": read}})
    rest.post(f"groups/{org.build_devs}/members.add", {"members": ["carol"]})
    rest.post(f"groups/{org.build_devs}/members.delete", {"members": ["carol"]})
    change = rest.post("changes/", {"project": project, "branch": org.branch, "subject": "Recorded change"})
    number = change["_number"]
    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": 1}})
    rest.call("DELETE", f"changes/{number}/reviewers/admin/votes/Code-Review")
    rest.post(f"changes/{number}/wip")
    rest.post(f"changes/{number}/ready")
    rest.post(f"changes/{number}/private")
    rest.call("DELETE", f"changes/{number}/private")
    rest.put(f"changes/{number}/topic", {"topic": "recorded"})
    rest.post(f"changes/{number}/abandon")
    rest.post(f"changes/{number}/restore")
    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": 2, "Verified": 1}})
    rest.post(f"changes/{number}/submit")
    rest.put("accounts/carol/name", {"name": "Carol Recorded"})
    rest.put("projects/record%2Fnew", {"create_empty_commit": True})


async def record(output: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="record-events-") as tmp, GerritServer() as server:
        fixture = GerritFixture(server=server, org=provision(server.url, server.admin_auth))
        setup = provision_events(fixture, Path(tmp))
        async with asyncssh.connect(
            "127.0.0.1",
            setup.port,
            username=fixture.org.bot.username,
            client_keys=[str(setup.private_key_file)],
            known_hosts=str(setup.known_hosts_file),
            agent_path=None,
            config=[],
        ) as conn:
            process = await conn.create_process("gerrit stream-events", stdin=asyncssh.DEVNULL)
            await asyncio.sleep(1.0)
            rest = Rest(server.url, server.admin_auth)
            try:
                await asyncio.to_thread(_changes, rest, fixture)
            finally:
                rest.close()
            lines: list[str] = []
            while True:
                try:
                    line = await asyncio.wait_for(process.stdout.readline(), 5.0)
                except TimeoutError:
                    break
                if not line:
                    break
                lines.append(str(line))
            process.close()
    await asyncio.to_thread(output.write_text, "".join(lines))
    print(f"{len(lines)} events -> {output}")
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "data" / "gerrit_events.jsonl"
    sys.exit(asyncio.run(record(target)))
