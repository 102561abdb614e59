"""Cached Checks and revokes under a flood of votes on a real Gerrit, with ``gerrit.events`` on.

One real Gerrit 3.10 (tests/_support/gerrit.py, the demo organisation and the event stream provisioned as the tests
do it) and, per round, a fresh ``gerrit-authz serve`` process (its own interpreter and event loop, like a deployment)
with 1 h TTLs, so only an event can change a decision. Rounds alternate ``gerrit.events`` on and off (the control:
the same flood, nothing to apply), so both see the shared machine's load alike. A client in this process sends cached
Checks through gRPC at a steady rate (open loop: each Check leaves at its scheduled time whatever the previous ones
are doing; a Check beyond 200 in flight is skipped and counted) and records each one's latency:

1. warm-up: every Check of the set twice (the answers get cached), statuses checked;
2. baseline: ``--baseline`` seconds of steady Checks, no flood;
3. flood: ``--flood`` seconds of the same Checks while a child process (``--voters`` threads, so they never share
   this client's GIL) posts Code-Review votes on ``--changes`` changes through Gerrit's REST API at up to
   ``--votes-per-s`` in total (each vote is a ``comment-added`` and a ``ref-updated`` of the change's meta ref on
   the stream). With events on, at 1/3 of it a BLOCK on Read is added to a project and at 2/3 a member is removed
   from a group; for each, a probe Checks the revoked request every 20 ms from the moment the REST call returned
   until it is denied (bounded at 10 s): that is the revoke delay. A second ``stream-events`` session of the bot
   in this process (the bystander) records when Gerrit sent the revoke's event, relative to the REST call's return.

The server's ``/metrics`` is read every 100 ms in both phases (events received, dropped, invalidations, backlog:
the backlog maximum is of those samples). CPU over each phase is read from /proc for the server, Gerrit, this
process, the flood and the whole machine ("others": what other engineers' jobs used meanwhile).

    python bench/event_flood.py [--rounds 4] [--baseline 10] [--flood 24] [--rate 100] [--votes-per-s 20] [--json F]

About a minute per round. Every loop is bounded in count and time; the whole run by ``--cap`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _support.authz import basic, check_request, check_stub, example_config_data  # noqa: E402
from _support.gerrit import GerritServer  # noqa: E402
from _support.gerrit_events import EventsSetup, provision_events  # noqa: E402
from _support.gerrit_provision import GerritFixture, Rest, provision  # noqa: E402
from _support.proc import stop_process  # noqa: E402

HOUR = {k: "1h" for k in ("account", "groups", "access", "capabilities", "change", "credentials", "negative")}
MAX_IN_FLIGHT = 200  # a Check that would exceed it is skipped and counted, never queued without bound
PROBE_EVERY_S = 0.02
PROBE_MAX_S = 10.0
SCRAPE_EVERY_S = 0.1


def _q(name: str) -> str:
    return name.replace("/", "%2F")


@dataclass
class Phase:
    """What one phase of steady Checks saw."""

    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, per Check answered as expected
    done_at: list[float] = field(default_factory=list)  # monotonic time each latency was recorded
    wrong: int = 0  # answered, but not the expected status
    errors: int = 0
    skipped: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds over the phase, by process (and machine)
    seconds: float = 0.0


def scrape(text: str) -> dict[str, float]:
    """The event stream's counters from one /metrics page, summed over labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("gerrit_authz_events"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name
            if sample.name.startswith("gerrit_authz_events_dropped"):
                key = f"{sample.name}{{{sample.labels.get('reason', '')}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process, of the whole machine (busy: neither idle nor iowait) and stolen by the
    hypervisor; the difference of two snapshots says who used the 2 cores over a phase."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    out = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out["machine_busy"] = (sum(values[:8]) - values[3] - values[4]) / tick
    out["machine_steal"] = values[7] / tick
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def start_server(config: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``gerrit-authz serve`` on ephemeral ports; the process, its Check address and its metrics URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "authz_server", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    found: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # a few lines at start and one at stop
            line = raw.decode(errors="replace")
            if "ext_authz gRPC listening on" in line:
                found["check"] = line.split()[-1]
            elif "metrics on" in line:
                found["metrics"] = line.split()[-1]

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while len(found) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if len(found) < 2:
        stop_process(proc)
        raise RuntimeError(f"gerrit-authz did not start; see {workdir / 'serve.log'}")
    return proc, found["check"], found["metrics"]


class Flood:
    """``voters`` threads posting votes at ``rate`` per second in total, bounded in count and time.

    Run in a child process (:func:`flood_process`), so its threads never share a GIL with the Check client."""

    def __init__(self, url: str, auth: tuple[str, str], changes: list[int], rate: float, voters: int) -> None:
        self.url, self.auth, self.changes, self.rate, self.voters = url, auth, changes, rate, voters
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.next = 0
        self.done: list[tuple[float, float]] = []  # (monotonic end, REST latency) of each vote
        self.failed = 0
        self.threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        limit = int(self.rate * seconds) + 1
        for _ in range(self.voters):
            thread = threading.Thread(target=self._vote, args=(seconds, limit), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _vote(self, seconds: float, limit: int) -> None:
        rest = Rest(self.url, self.auth)
        try:
            while not self.stop.is_set() and time.monotonic() - self.t0 < seconds:
                with self.lock:
                    k, self.next = self.next, self.next + 1
                if k >= limit:
                    return
                self.stop.wait(max(0.0, self.t0 + k / self.rate - time.monotonic()))
                number = self.changes[k % len(self.changes)]
                value = (k // len(self.changes)) % 2  # each change alternates, so every vote changes something
                t0 = time.perf_counter()
                try:
                    rest.post(f"changes/{number}/revisions/current/review", {"labels": {"Code-Review": value}})
                    self.done.append((time.monotonic(), time.perf_counter() - t0))
                except Exception:  # counted; the flood goes on
                    self.failed += 1
        finally:
            rest.close()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def flood_process(conn: Connection, url: str, auth: tuple[str, str], changes: list[int], args: dict[str, Any]) -> None:
    """The child process: flood for ``args["flood"]`` seconds (or until told to stop), then send what it did."""
    flood = Flood(url, auth, changes, args["votes_per_s"], args["voters"])
    flood.start(args["flood"])
    conn.send(flood.t0)
    conn.poll(args["flood"] + 5)
    flood.join()
    conn.send({"t0": flood.t0, "done": flood.done, "failed": flood.failed})


class FloodChild:
    """A :func:`flood_process` started and collected from the parent."""

    def __init__(self, url: str, auth: tuple[str, str], changes: list[int], args: argparse.Namespace) -> None:
        self.conn, child = multiprocessing.get_context("spawn").Pipe()
        settings = {"flood": args.flood, "votes_per_s": args.votes_per_s, "voters": args.voters}
        self.proc = multiprocessing.get_context("spawn").Process(
            target=flood_process, args=(child, url, auth, changes, settings), daemon=True
        )

    async def start(self) -> None:
        self.proc.start()
        if not await asyncio.to_thread(self.conn.poll, 60):
            raise RuntimeError("the flood process did not start")
        self.conn.recv()

    async def stop(self) -> dict[str, Any]:
        self.conn.send("stop")
        ready = await asyncio.to_thread(self.conn.poll, 60)
        result: dict[str, Any] = self.conn.recv() if ready else {"t0": 0.0, "done": [], "failed": -1}
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        return result


Work = list[tuple[str, tuple[str, str], int]]  # (path, user, expected status)


async def status_of(stub: Any, path: str, user: tuple[str, str]) -> int:
    resp = await stub.Check(check_request("GET", path, {"authorization": basic(*user)}), timeout=10)
    return 200 if resp.status.code == 0 else int(resp.denied_response.status.code)


async def sampler(metrics_url: str, phase: Phase, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            try:
                sample = scrape((await client.get(metrics_url)).text)
                sample["t"] = time.monotonic()
                phase.samples.append(sample)
            except httpx.HTTPError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SCRAPE_EVERY_S)


async def steady(stub: Any, work: Work, rate: float, seconds: float, phase: Phase) -> None:
    """Open loop: Check i leaves at t0 + i/rate, whatever the earlier ones are doing."""
    in_flight: set[asyncio.Task[None]] = set()

    async def one(path: str, user: tuple[str, str], want: int) -> None:
        sent = time.perf_counter()
        try:
            got = await status_of(stub, path, user)
        except Exception:
            phase.errors += 1
            return
        if got != want:
            phase.wrong += 1
        phase.latencies.append(time.perf_counter() - sent)
        phase.done_at.append(time.monotonic())

    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        if len(in_flight) >= MAX_IN_FLIGHT:
            phase.skipped += 1
            continue
        task = asyncio.create_task(one(*work[i % len(work)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=15)


class Bystander:
    """A second ``stream-events`` session of the bot, read as fast as it comes in this process: when Gerrit sent
    each event, so a revoke's delay splits into Gerrit's part (until the event is on the wire) and ours."""

    def __init__(self, setup: EventsSetup, username: str) -> None:
        self.setup, self.username = setup, username
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Bystander:
        self.conn = await asyncssh.connect(
            "127.0.0.1",
            self.setup.port,
            username=self.username,
            client_keys=[str(self.setup.private_key_file)],
            known_hosts=str(self.setup.known_hosts_file),
            agent_path=None,
            config=[],
        )
        process = await self.conn.create_process("gerrit stream-events", stdin=asyncssh.DEVNULL, encoding=None)
        self.task = asyncio.create_task(self._read(process))
        return self

    async def _read(self, process: Any) -> None:
        for _ in range(1_000_000):  # bounded; the session ends with the round
            line = await process.stdout.readline()
            if not line:
                return
            with contextlib.suppress(ValueError):
                self.seen.append((time.monotonic(), json.loads(line)))

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.conn.close()

    def first(self, since: float, ref: str, project: str) -> float | None:
        """When the first ``ref-updated`` (or batch) of ``project``'s ``ref`` after ``since`` arrived."""
        for at, event in self.seen:
            if at < since:
                continue
            updates = [event.get("refUpdate")] if event.get("type") == "ref-updated" else event.get("refUpdates", [])
            for update in updates if isinstance(updates, list) else []:
                if isinstance(update, dict) and update.get("project") == project and update.get("refName") == ref:
                    return at
        return None


async def revoke(
    stub: Any, name: str, call: Any, path: str, user: tuple[str, str], stream: Bystander, ref: tuple[str, str]
) -> dict[str, Any]:
    """Make the revoke in Gerrit, then Check every 20 ms until it is denied; the delay from the REST call's return,
    and when a bystander reader of the stream got the revoke's event (``ref``: its project and ref name)."""
    assert await status_of(stub, path, user) == 200, f"{name}: not allowed before the revoke"
    called = time.monotonic()
    await asyncio.to_thread(call)
    since = time.monotonic()
    probes, delay = 0, None
    while time.monotonic() - since < PROBE_MAX_S:
        probes += 1
        if await status_of(stub, path, user) == 403:
            delay = time.monotonic() - since
            break
        await asyncio.sleep(PROBE_EVERY_S)
    await asyncio.sleep(0.5)  # the bystander's copy of the event, if it is on its way
    event_at = stream.first(called, ref[1], ref[0])
    return {
        "revoke": name,
        "delay_s": delay,
        "probes": probes,
        "rest_call_s": since - called,
        "event_seen_by_bystander_s": None if event_at is None else event_at - since,
    }


def summary(phase: Phase) -> dict[str, Any]:
    lat = phase.latencies
    first, last = (phase.samples[0], phase.samples[-1]) if phase.samples else ({}, {})

    def delta(key: str) -> float:
        return last.get(key, 0.0) - first.get(key, 0.0)

    span = (last.get("t", 0.0) - first.get("t", 0.0)) or 1.0
    return {
        "phase": phase.name,
        "checks": len(lat),
        "wrong_status": phase.wrong,
        "errors": phase.errors,
        "skipped": phase.skipped,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat) * 1000 if lat else float("nan"),
        "over_50ms": sum(x > 0.05 for x in lat),
        "events_per_s": delta("gerrit_authz_events_received_total") / span,
        "invalidations_per_s": delta("gerrit_authz_events_invalidations_total") / span,
        "dropped_gerrit": delta("gerrit_authz_events_dropped_total{gerrit}"),
        "dropped_backlog": delta("gerrit_authz_events_dropped_total{backlog}"),
        "backlog_max": max((s.get("gerrit_authz_events_backlog", 0.0) for s in phase.samples), default=0.0),
        "reconnects": delta("gerrit_authz_events_reconnects_total"),
        "cpu_cores": {name: round(v / phase.seconds, 3) for name, v in phase.cpu.items()},
        "server_cpu_ms_per_check": phase.cpu.get("server", 0.0) * 1000 / max(1, len(lat)),
    }


async def wait_connected(metrics_url: str) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        for _ in range(int(60 / 0.1)):  # the stream is open once the follower reports it
            if scrape((await client.get(metrics_url)).text).get("gerrit_authz_events_connected") == 1.0:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the event stream did not connect")


async def measure(
    stub: Any, pids: dict[str, int], metrics_url: str, name: str, work: Work, args: argparse.Namespace
) -> Phase:
    """Steady Checks for the phase's seconds, /metrics sampled meanwhile; the phase with the server's CPU."""
    seconds = args.baseline if name == "baseline" else args.flood
    phase = Phase(name)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(metrics_url, phase, stop))
    cpu0 = cpu_snapshot(pids)
    try:
        await steady(stub, work, args.rate, seconds, phase)
    finally:
        cpu1 = cpu_snapshot(pids)
        phase.cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
        phase.cpu["others"] = phase.cpu["machine_busy"] - sum(phase.cpu.get(n, 0.0) for n in pids)
        stop.set()
        await sampling
    phase.seconds = seconds
    return phase


async def revoker(
    stub: Any, rest: Rest, project: str, group: str, user: tuple[str, str], every: float, stream: Bystander
) -> list[Any]:
    """A BLOCK at ``every`` seconds, a group member removed at twice that; each one's revoke delay."""
    block = {"read": {"rules": {"global:Registered-Users": {"action": "BLOCK"}}}}
    access = {"add": {"refs/heads/*": {"permissions": block}}}
    t0 = time.monotonic()
    out: list[Any] = []
    await asyncio.sleep(every)
    out.append(
        await revoke(
            stub,
            "BLOCK on Read for the project",
            lambda: rest.post(f"projects/{_q(project)}/access", access),
            f"/src/{_q(project)}/-/main",
            user,
            stream,
            (project, "refs/meta/config"),
        )
    )
    await asyncio.sleep(max(0.0, t0 + 2 * every - time.monotonic()))
    out.append(
        await revoke(
            stub,
            "group member removed",
            lambda: rest.post(f"groups/{group}/members.delete", {"members": [user[0]]}),
            "/probe",
            user,
            stream,
            ("All-Users", f"refs/groups/{group[:2]}/{group}"),
        )
    )
    return out


def votes_summary(votes: dict[str, Any]) -> dict[str, Any]:
    done = votes["done"]
    span = (max(end for end, _ in done) - votes["t0"]) if done else 1.0
    rest_latency = [lat for _, lat in done]
    return {
        "votes": len(done),
        "failed": votes["failed"],
        "votes_per_s": len(done) / span,
        "rest_p50_ms": percentile(rest_latency, 50) * 1000,
        "rest_p99_ms": percentile(rest_latency, 99) * 1000,
    }


@dataclass(frozen=True)
class Setup:
    """What every round shares: the Gerrit, its stream settings, the server's password file, the Checks."""

    fixture: GerritFixture
    events: Any
    password: Path
    team: str
    changes: list[int]
    work: Work


def server_config(setup: Setup, probe_group: str, events: bool) -> dict[str, Any]:
    server, org = setup.fixture.server, setup.fixture.org
    data: dict[str, Any] = example_config_data()
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"})
    data["gerrit"].pop("password_env", None)
    data["gerrit"].update({"url": server.url, "username": org.bot.username, "password_file": str(setup.password)})
    if events:
        data["gerrit"]["events"] = setup.events.config()
    data["identity"] = [{"gerrit_http_credentials": {}}]
    data["cache"]["ttl"] = HOUR
    read = {"permission": {"project": "{project}", "ref": "refs/heads/{branch}", "perm": "read"}}
    data["rules"] = [
        {"name": "team", "match": {"path": "/team"}, "require": {"group": setup.team}},
        {"name": "probe", "match": {"path": "/probe"}, "require": {"group": probe_group}},
        {"name": "read", "match": {"path": "/src/{project:path}/-/{branch}"}, "require": read},
        {"name": "open", "match": {"path": "/open/{c}"}, "require": {"change": {"id": "{c}", "status": "NEW"}}},
    ]
    return data


async def one_round(args: argparse.Namespace, setup: Setup, rest: Rest, workdir: Path, events: bool) -> dict[str, Any]:
    """Baseline then flood against a fresh server; with events on, two revokes during the flood."""
    server, org = setup.fixture.server, setup.fixture.org
    tag = uuid.uuid4().hex[:6]
    probe_group = str(rest.put(f"groups/flood-probe-{tag}", {"members": ["carol"]})["id"])
    project = f"flood/{tag}"
    rest.put(f"projects/{_q(project)}", {"branches": ["main"], "create_empty_commit": True})
    probes: Work = [(f"/src/{_q(project)}/-/main", org.carol.auth, 200), ("/probe", org.carol.auth, 200)]
    proc, address, metrics_url = start_server(server_config(setup, probe_group, events), workdir)
    gerrit_proc = getattr(server, "_proc", None)
    pids = {"server": proc.pid, "bench": os.getpid(), **({"gerrit": gerrit_proc.pid} if gerrit_proc else {})}
    try:
        async with check_stub(address) as stub, Bystander(setup.events, org.bot.username) as stream:
            if events:
                await wait_connected(metrics_url)
            await asyncio.sleep(3.0)  # the setup's own events (project, group) drain first
            for path, user, want in (setup.work + probes) * 2:
                got = await status_of(stub, path, user)
                assert got == want, f"warm-up {path} as {user[0]}: {got}, want {want}"
            baseline = await measure(stub, pids, metrics_url, "baseline", setup.work, args)
            flood = FloodChild(server.url, server.admin_auth, setup.changes, args)
            await flood.start()
            pids["flood"] = flood.proc.pid or 0
            every = args.flood / 3
            revoking = None
            if events:
                revoking = asyncio.create_task(revoker(stub, rest, project, probe_group, org.carol.auth, every, stream))
            flood_start = time.monotonic()
            revoke_at = flood_start + every
            try:
                flooded = await measure(stub, pids, metrics_url, "flood", setup.work, args)
            finally:
                votes = await flood.stop()
            flood_end = time.monotonic()
            revokes = await asyncio.wait_for(revoking, PROBE_MAX_S * 2) if revoking is not None else []
    finally:
        stop_process(proc)
    base, whole = summary(baseline), summary(flooded)
    before = [lat for lat, t in zip(flooded.latencies, flooded.done_at, strict=True) if t < revoke_at]
    return {
        "events": events,
        "baseline": base,
        "flood": whole,
        "flood_first_third": {
            "checks": len(before),
            "p50_ms": percentile(before, 50) * 1000,
            "p99_ms": percentile(before, 99) * 1000,
            "max_ms": max(before) * 1000 if before else float("nan"),
        },
        "votes": votes_summary(votes),
        "gerrit_events_per_s_seen_by_bystander": sum(flood_start <= t < flood_end for t, _ in stream.seen)
        / (flood_end - flood_start),
        "revokes": revokes,
        "ratios": {
            "p50_flood_over_baseline": whole["p50_ms"] / base["p50_ms"],
            "p99_flood_over_baseline": whole["p99_ms"] / base["p99_ms"],
        },
    }


async def run(args: argparse.Namespace, fixture: GerritFixture, tmp: Path) -> dict[str, Any]:
    server, org = fixture.server, fixture.org
    events = provision_events(fixture, tmp / "events")
    password = tmp / "password"
    password.write_text(org.bot.http_password)
    rest = Rest(server.url, server.admin_auth)
    try:
        tag = uuid.uuid4().hex[:6]
        team = str(rest.put(f"groups/flood-team-{tag}", {"members": ["alice", "carol"]})["id"])
        body = {"project": org.build_project, "branch": "main"}
        changes = [
            int(rest.post("changes/", {**body, "subject": f"flood {tag} {i}"})["_number"]) for i in range(args.changes)
        ]
        work: Work = []
        for name, auth in {
            "alice": org.alice.auth,
            "bob": org.bob.auth,
            "carol": org.carol.auth,
            "dave": org.dave.auth,
        }.items():
            work.append(("/team", auth, 200 if name in ("alice", "carol") else 403))
            work.append(("/src/platform%2Fbuild/-/main", auth, 200))
            work.append(("/src/platform%2Fsecret/-/main", auth, 200 if name == "bob" else 403))
            work.append((f"/open/{org.change_open.number}", auth, 200))
        setup = Setup(fixture, events, password, team, changes, work)
        rounds = []
        for i in range(args.rounds):  # alternating, so both modes see the machine's load the same way
            on = i % 2 == 0 or args.no_control
            rounds.append(
                await one_round(args, setup, rest, REPO / "bench" / ".work" / "event_flood" / f"round{i + 1}", on)
            )
    finally:
        rest.close()
    return {"checks_in_the_set": len(work), "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}


def table(results: dict[str, Any]) -> str:
    """One Markdown row per phase of each round."""
    head = (
        "| round | events | phase | Checks | p50 ms | p99 ms | max ms | > 50 ms | events/s | dropped | backlog max "
        "| votes/s | cores: server / Gerrit / others | revoke delays |"
    )
    lines = [head, "|" + "---|" * 14]
    for i, r in enumerate(results["rounds"]):
        for name in ("baseline", "flood"):
            p = r[name]
            cores = p["cpu_cores"]
            votes = f"{r['votes']['votes_per_s']:.1f}" if name == "flood" else ""
            delays = ""
            if name == "flood" and r["revokes"]:
                delays = ", ".join(
                    ("not seen in 10 s" if x["delay_s"] is None else f"{x['delay_s'] * 1000:.0f} ms")
                    + (
                        " (event: not seen)"
                        if x["event_seen_by_bystander_s"] is None
                        else f" (event {x['event_seen_by_bystander_s'] * 1000:+.0f} ms)"
                    )
                    for x in r["revokes"]
                )
            lines.append(
                f"| {i + 1} | {'on' if r['events'] else 'off'} | {name} | {p['checks']} | {p['p50_ms']:.1f} "
                f"| {p['p99_ms']:.1f} | {p['max_ms']:.0f} | {p['over_50ms']} | {p['events_per_s']:.1f} "
                f"| {p['dropped_gerrit'] + p['dropped_backlog']:.0f} | {p['backlog_max']:.0f} | {votes} "
                f"| {cores.get('server', 0):.2f} / {cores.get('gerrit', 0):.2f} / {cores.get('others', 0):.2f} "
                f"| {delays} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of steady Checks without the flood")
    parser.add_argument("--flood", type=float, default=24.0, help="seconds of steady Checks during the flood")
    parser.add_argument("--rate", type=float, default=100.0, help="cached Checks per second (open loop)")
    parser.add_argument("--votes-per-s", type=float, default=20.0, help="votes per second, all voters together")
    parser.add_argument("--voters", type=int, default=8, help="threads posting votes")
    parser.add_argument("--changes", type=int, default=10, help="changes voted on")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating events on and off (control)")
    parser.add_argument("--no-control", action="store_true", help="every round with events on")
    parser.add_argument("--cap", type=float, default=600.0, help="seconds before the whole run is abandoned")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp, GerritServer() as server:
        fixture = GerritFixture(server=server, org=provision(server.url, server.admin_auth))
        results = asyncio.run(asyncio.wait_for(run(args, fixture, Path(tmp)), args.cap))
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
