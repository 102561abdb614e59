"""What "operating without restarts" costs on the hot path, in-process, one run (figures go to BENCHMARKS.md).

- decide() through the LiveRuntime (one snapshot per Check) vs. the Authorizer directly;
- SecretFile.get() (one stat per Gerrit request) vs. a fixed string;
- one reload (validate + build + swap) of the example config, and decisions while reloading 20 times a second.

Bounded: fixed iteration counts, loopback/no network (the rule decided needs no Gerrit).
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz_server._app import build_components
from authz_server._deadline import Deadline
from authz_server._input import parse_check_request
from authz_server._opstats import ReloadStats
from authz_server._reload import LiveRuntime, Reloader
from authz_server._secrets import SecretFile, StaticSecret
from authz_server.checkrequest import build_check_request
from authz_server.config import load_config

N = 50_000
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "config.yaml"


def _config_file(tmp: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data = copy.deepcopy(data)
    secret = tmp / "pw"
    secret.write_text("bench-password")
    data["gerrit"].pop("password_env")
    data["gerrit"]["password_file"] = str(secret)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = _config_file(tmp)
        components = build_components(load_config(path))
        runtime = LiveRuntime(components, retire_after=0)
        inp = parse_check_request(build_check_request("GET", "/healthz", host="svc"))
        deadline = Deadline.after(60)

        async def per_call(decider: object) -> float:
            decide = decider.decide  # type: ignore[attr-defined]
            start = time.perf_counter()
            for _ in range(N):
                await decide(inp, deadline)
            return (time.perf_counter() - start) / N * 1e6

        await per_call(runtime)  # warm-up
        pairs = [(await per_call(components.authorizer), await per_call(runtime)) for _ in range(5)]  # alternating
        direct, live = min(p[0] for p in pairs), min(p[1] for p in pairs)
        print(f"decide(): Authorizer {direct:.2f} us, LiveRuntime {live:.2f} us, ratio {live / direct:.3f}")

        secret_file, fixed = SecretFile(tmp / "pw"), StaticSecret("bench-password")
        for name, secret in (("StaticSecret", fixed), ("SecretFile", secret_file)):
            secret.get()
            start = time.perf_counter()
            for _ in range(N):
                secret.get()
            print(f"{name}.get(): {(time.perf_counter() - start) / N * 1e6:.2f} us")

        reloads = []
        for _ in range(50):
            start = time.perf_counter()
            await runtime.apply(load_config(path))
            reloads.append(time.perf_counter() - start)
        reloads.sort()
        print(
            f"one reload (validate + build + swap): median {reloads[25] * 1000:.2f} ms, max {reloads[-1] * 1000:.2f} ms"
        )

        stop = asyncio.Event()

        reloader = Reloader(path, runtime, ReloadStats(), interval=0)

        async def reloading() -> int:
            count = 0
            while not stop.is_set() and count < 200:
                count += await reloader.reload("bench")  # as serve does it: parsed off the event loop
                await asyncio.sleep(0.05)
            return count

        task = asyncio.create_task(reloading())
        decided = allowed = 0
        gaps: list[float] = []
        start = last = time.perf_counter()
        while time.perf_counter() - start < 3.0:
            for _ in range(50):
                decided += 1
                allowed += (await runtime.decide(inp, deadline)).allowed
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        stop.set()
        count = await task
        gaps.sort()
        p99 = gaps[int(len(gaps) * 0.99)] * 1000
        print(
            f"during {count} reloads in 3 s: {decided} decisions, {decided - allowed} not allowed, "
            f"longest stall of the decision loop {gaps[-1] * 1000:.1f} ms (p99 {p99:.1f} ms)"
        )
        await runtime.aclose()


if __name__ == "__main__":
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    asyncio.run(main())
