"""Gerrit requests per decision with the event stream on (1 h TTLs) vs off (the example's TTLs), on a real Gerrit.

One real Gerrit (tests/_support/gerrit.py) with the demo organisation; gerrit-authz in-process, its Gerrit HTTP
client counted by a wrapping transport. The workload runs in rounds of about a second: every ``--change-every``
rounds Gerrit changes once (carol in or out of a group, alternating with a Code-Review vote on an open change);
every round makes 42 decisions over the example's rules (read, push, deploy, admin) for four users, plus carol's
group and an open change. With events on, each group change also measures how long the decision on carol's group
takes to follow it (polled every 20 ms, bounded at 10 s).

    .venv/bin/python bench/events.py [--seconds 150] [--change-every 10]   # loopback only; bounded in rounds and time
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _support.authz import basic, check_request, check_stub, example_config_data, make_config  # noqa: E402
from _support.gerrit import GerritServer  # noqa: E402
from _support.gerrit_events import provision_events  # noqa: E402
from _support.gerrit_provision import GerritFixture, Rest, provision  # noqa: E402

from authz_server._app import build_components  # noqa: E402
from authz_server._server import build_server  # noqa: E402

MAX_ROUNDS = 1000
DECISIONS_PER_ROUND = 40


class Counting(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_mode(
    fixture: GerritFixture, rest: Rest, config: Any, group: str, seconds: float, change_every: int
) -> dict[str, Any]:
    org = fixture.org
    counting = Counting()
    app = build_server(config, build_components(config, transport=counting))
    await app.start()
    if app.events is not None:
        await asyncio.wait_for(app.events.connected.wait(), 20)
    users = [org.alice.auth, org.bob.auth, org.carol.auth, org.dave.auth]
    artifact = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
    work = [("GET", artifact), ("PUT", artifact), ("POST", f"/deploy/{org.change_merged.number}"), ("GET", "/admin/x")]
    decisions, delays, member, vote = 0, [], True, 0
    start = counting.requests
    t0 = time.monotonic()
    async with check_stub(app.address) as stub:

        async def decide(method: str, path: str, user: tuple[str, str]) -> int:
            nonlocal decisions
            decisions += 1
            resp = await stub.Check(check_request(method, path, {"authorization": basic(*user)}), timeout=10)
            return 200 if resp.status.code == 0 else int(resp.denied_response.status.code)

        for round_no in range(MAX_ROUNDS):
            if time.monotonic() - t0 > seconds:
                break
            round_start = time.monotonic()
            mutation = round_no // change_every
            if round_no % change_every == 0 and mutation % 2 == 0:
                member = not member
                op = "members.add" if member else "members.delete"
                await asyncio.to_thread(rest.post, f"groups/{group}/{op}", {"members": ["carol"]})
                changed = time.monotonic()
                if app.events is not None:
                    want = 200 if member else 403
                    while time.monotonic() - changed < 10:
                        if await decide("GET", "/probe", org.carol.auth) == want:
                            delays.append(time.monotonic() - changed)
                            break
                        await asyncio.sleep(0.02)
            elif round_no % change_every == 0:
                vote = 1 - vote
                review = {"labels": {"Code-Review": vote}}
                await asyncio.to_thread(rest.post, f"changes/{org.change_open.number}/revisions/current/review", review)
            for i in range(DECISIONS_PER_ROUND):
                method, path = work[i % len(work)]
                await decide(method, path, users[(i // len(work)) % len(users)])
            await decide("GET", "/probe", org.carol.auth)
            await decide("GET", f"/deploy/{org.change_open.number}", org.alice.auth)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - round_start)))
    elapsed = time.monotonic() - t0
    await app.stop(grace=1.0)
    return {
        "decisions": decisions,
        "gerrit_requests": counting.requests - start,
        "per_decision": (counting.requests - start) / decisions,
        "seconds": elapsed,
        "delays": delays,
    }


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=150.0, help="per mode; longer than the example TTLs")
    parser.add_argument("--change-every", type=int, default=10, help="rounds (about 1 s each) between changes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp, GerritServer() as server:
        fixture = GerritFixture(server=server, org=provision(server.url, server.admin_auth))
        setup = provision_events(fixture, Path(tmp) / "events")
        password = Path(tmp) / "password"
        password.write_text(fixture.org.bot.http_password)
        rest = Rest(server.url, server.admin_auth)
        group = str(rest.put(f"groups/bench-{uuid.uuid4().hex[:6]}", {"members": ["carol"]})["id"])
        rules = [{"name": "probe", "match": {"path": "/probe"}, "require": {"group": group}}]
        rules += example_config_data()["rules"]
        identity = [{"gerrit_http_credentials": {}}]
        off = make_config(server.url, password, identity=identity, rules=rules)
        hour = {k: "1h" for k in ("account", "groups", "access", "capabilities", "change", "credentials")}
        on = make_config(
            server.url, password, identity=identity, rules=rules, cache={"ttl": hour}, gerrit={"events": setup.config()}
        )
        results = {}
        for name, config in (("events off, example TTLs", off), ("events on, 1 h TTLs", on)):
            results[name] = await run_mode(fixture, rest, config, group, args.seconds, args.change_every)
        rest.close()
    print(f"{args.seconds:.0f} s per mode, one Gerrit change every {args.change_every} rounds (~1 s each)")
    print("| mode | decisions | Gerrit requests | per decision | event → decision p50 | max |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        d = r["delays"]
        p50 = f"{statistics.median(d) * 1000:.0f} ms" if d else "—"
        mx = f"{max(d) * 1000:.0f} ms" if d else "—"
        print(f"| {name} | {r['decisions']} | {r['gerrit_requests']} | {r['per_decision']:.3f} | {p50} | {mx} |")
    off_r, on_r = results["events off, example TTLs"], results["events on, 1 h TTLs"]
    print(f"\nratio on/off requests per decision: {on_r['per_decision'] / off_r['per_decision']:.2f}")
    print(f"delay samples (events on): {len(on_r['delays'])}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
