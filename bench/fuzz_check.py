"""Fuzz ``Authorization/Check`` over gRPC with random and mutated serialized CheckRequests.

    .venv/bin/python bench/fuzz_check.py [--n 100000] [--seed 8] [--long 3000] [--json out.json]

Starts gerrit-authz in this process (the example config's rules, Basic identity, a Gerrit URL on a closed
loopback port so every Gerrit lookup fails fast), then sends N CheckRequests over a real grpc.aio channel: half
built from random parts (methods, paths from the example policy's words with escapes, dot-segments, control and
non-UTF-8 bytes, 8 KiB+ paths, header_map raw values), half byte-level mutations of serialized valid requests
(bit flips, truncations, splices; only those that still parse as a CheckRequest are sent, as Envoy's would).
Counts: RPC errors, internal errors (``internal_error``: an exception escaped the pipeline), answers whose
status is not one of the contract's (OK, 3, 7, 14, 16) or whose HTTP status disagrees with it. Then times
``--long`` sequential Checks of an 8 KiB path (the longest accepted) and reports p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from authz_server._input import MAX_PATH_BYTES  # noqa: E402
from authz_server._server import build_server  # noqa: E402
from authz_server.checkrequest import build_check_request  # noqa: E402
from authz_server.config import parse_config  # noqa: E402

CONTRACT = {0: 200, 3: 400, 7: 403, 14: 503, 16: 401}
WORDS = ["artifacts", "admin", "deploy", "healthz", "-", "+", "main", "out", "app.tar", "platform", "build", "12"]
ODD = ["", ".", "..", "%2e%2e", "%2F", "%2f", "%252F", "%25", "%FF", "%00", "%C3%A9", "%", "%G1", ";x", "\\", "é"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "", "BREW", "G\u00c9T"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes: connections are refused


def config(password_file: Path) -> Any:
    data = yaml.safe_load((REPO / "examples" / "config.yaml").read_text())
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"})
    data["gerrit"].pop("password_env", None)
    data["gerrit"].update({"url": f"http://127.0.0.1:{_closed_port()}", "password_file": str(password_file)})
    data["identity"] = [{"gerrit_http_credentials": {}}]
    return parse_config(data)


def random_path(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return "/artifacts/p/-/main/" + "a/" * rng.randint(4000, 4100)  # around the 8 KiB bound
    segs = []
    for _ in range(rng.randint(0, 8)):
        word = rng.choice(WORDS + ODD)
        if rng.random() < 0.3:
            word = "".join(f"%{ord(c):02X}" if ord(c) < 128 and rng.random() < 0.4 else c for c in word)
        segs.append(word)
    path = "/" + rng.choice(["/", "/", "%2F", "//"]).join(segs)
    if rng.random() < 0.1:
        path = path[: rng.randint(0, len(path))]
    if rng.random() < 0.2:
        path += "?" + rng.choice(["a=1", "x=%2F", "", "#frag", "\x00"])
    return path


def random_request(rng: random.Random) -> CheckRequest:
    headers = {rng.choice(["authorization", "x-gerrit-username", "x-authz-rule", "accept", "x"]): rng.choice(
        ["Basic YWxpY2U6c2VjcmV0", "Bearer abc.def.ghi", "Basic !!!", "", "v" * rng.randint(0, 5000)]
    ) for _ in range(rng.randint(0, 4))}  # fmt: skip
    request = build_check_request(rng.choice(METHODS), random_path(rng), host="svc.local", headers=headers)
    if rng.random() < 0.3:
        http = request.attributes.request.http
        for _ in range(rng.randint(1, 4)):
            h = http.header_map.headers.add()
            h.key = rng.choice([":path", ":method", "authorization", "x-bin"])
            h.raw_value = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
    if rng.random() < 0.1:
        request.attributes.ClearField("request")
    return request


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.5 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind < 0.7 and out:
            del out[rng.randrange(len(out)) :]
        elif kind < 0.9:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif out:
            a = rng.randrange(len(out))
            out[a:a] = out[a : a + rng.randint(1, 32)]
    return bytes(out)


def next_input(rng: random.Random) -> CheckRequest:
    request = random_request(rng)
    if rng.random() < 0.5:
        return request
    for _ in range(8):
        mutated = CheckRequest()
        try:
            mutated.ParseFromString(mutate(rng, request.SerializeToString()))
        except Exception:  # not a CheckRequest: Envoy would never send it
            continue
        return mutated
    return request


def judge(response: CheckResponse, tally: Counter[str]) -> None:
    code = response.status.code
    tally[f"status_{code}"] += 1
    if code not in CONTRACT:
        tally["off_contract"] += 1
        return
    if code == 0:
        if not response.HasField("ok_response"):
            tally["off_contract"] += 1
        return
    denied = response.denied_response
    if denied.status.code != CONTRACT[code]:
        tally["off_contract"] += 1
    if json.loads(denied.body).get("error") == "internal_error":
        tally["internal_error"] += 1


async def fuzz(stub: Any, n: int, seed: int, concurrency: int = 8) -> Counter[str]:
    rng = random.Random(seed)
    tally: Counter[str] = Counter()
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < n:
            request = next_input(rng)
            sent += 1
            try:
                judge(await stub.Check(request, timeout=5), tally)
            except grpc.aio.AioRpcError as exc:
                tally[f"rpc_error_{exc.code().name}"] += 1
                tally["rpc_errors"] += 1
            tally["inputs"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def long_path_latency(stub: Any, count: int) -> dict[str, float]:
    path = "/artifacts/p/-/main/" + "a/" * ((MAX_PATH_BYTES - 21) // 2)
    path = path[:MAX_PATH_BYTES]
    request = build_check_request("GET", path, host="svc.local")
    times: list[float] = []
    codes: Counter[int] = Counter()
    for _ in range(count):
        started = time.perf_counter()
        response = await stub.Check(request, timeout=5)
        times.append((time.perf_counter() - started) * 1000)
        codes[response.status.code] += 1
    times.sort()
    return {
        "path_bytes": len(path),
        "p50_ms": round(times[len(times) // 2], 3),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
        "max_ms": round(times[-1], 3),
        "statuses": dict(codes),  # type: ignore[dict-item]
    }


async def in_process_latency(app: Any, count: int) -> dict[str, float]:
    """The same 8 KiB Check without gRPC: wall time and this thread's CPU time (robust to a busy machine)."""
    from authz_server._deadline import Deadline
    from authz_server._response import to_check_response
    from authz_server._servicer import run_check

    path = ("/artifacts/p/-/main/" + "a/" * ((MAX_PATH_BYTES - 21) // 2))[:MAX_PATH_BYTES]
    request = build_check_request("GET", path, host="svc.local")
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(count):
        w, c = time.perf_counter(), time.thread_time()
        decision, inp = await run_check(app.components.authorizer, request, Deadline.after(1.0))
        to_check_response(decision, inp, retry_after=1)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - w) * 1000)
    wall.sort()
    cpu.sort()
    p99 = int(count * 0.99) - 1
    return {
        "wall_p50_ms": round(wall[count // 2], 3),
        "wall_p99_ms": round(wall[p99], 3),
        "cpu_p50_ms": round(cpu[count // 2], 3),
        "cpu_p99_ms": round(cpu[p99], 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--long", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # 100k audit lines would only measure the terminal
    with tempfile.TemporaryDirectory() as tmp:
        password = Path(tmp) / "password"
        password.write_text("unused")
        app = build_server(config(password))
        await app.start()
        try:
            async with grpc.aio.insecure_channel(app.address) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                started = time.perf_counter()
                tally = await fuzz(stub, args.n, args.seed)
                elapsed = time.perf_counter() - started
                latency = await long_path_latency(stub, args.long)
                latency["in_process"] = await in_process_latency(app, args.long)  # type: ignore[assignment]
        finally:
            await app.stop(grace=1.0)
    result = {
        "inputs": tally["inputs"],
        "seconds": round(elapsed, 1),
        "rpc_errors": tally["rpc_errors"],
        "internal_errors": tally["internal_error"],
        "off_contract": tally["off_contract"],
        "statuses": {k: v for k, v in sorted(tally.items()) if k.startswith("status_")},
        "long_path": latency,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = not (result["rpc_errors"] or result["internal_errors"] or result["off_contract"]) and (latency["p99_ms"] < 5.0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
