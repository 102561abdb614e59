"""What the route hardening adds to a Check: parse + ``Policy.match`` + ``to_check_response``, per request shape.

    PYTHONPATH=. python bench/routes_overhead.py [--n 20000] [--config examples/config.yaml]

Run it once with this tree on ``PYTHONPATH`` and once with an older tree (``git archive OLD | tar -x -C /tmp/old``,
then ``PYTHONPATH=/tmp/old``), both with the same ``--config``, and compare the CPU microseconds (process time, so
other load on the machine counts less): the difference is what the other readings (%2F, trailing slash, case,
suffix, method override) and the header-name normalisation cost per Check. Nothing is asked of Gerrit; the
decision is a fixed allow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import authz_server
from authz_server._engine import Decision
from authz_server._facts import Account
from authz_server._identity import Identity, Principal
from authz_server._input import parse_check_request
from authz_server._policy import Policy
from authz_server._response import to_check_response
from authz_server.checkrequest import build_check_request
from authz_server.config import load_config

HEADERS = {
    "authorization": "Basic Ym9iOnNlY3JldA==",
    "user-agent": "curl/8.5.0",
    "accept": "*/*",
    "x-request-id": "00000000-0000-4000-8000-000000000000",
    "x-forwarded-proto": "https",
    "x-forwarded-for": "192.0.2.1",
    "x-envoy-external-address": "192.0.2.1",
}
SHAPES = {
    "artifact, plain slash": ("GET", "/artifacts/platform/build/-/main/out/app.tar"),
    "artifact, %2F": ("GET", "/artifacts/platform%2Fbuild/-/main/out/app.tar"),
    "artifact, upper case + suffix": ("GET", "/artifacts/Platform/Build/-/Main/README.md"),
    "deploy": ("POST", "/deploy/12345"),
    "dashboard, trailing slash": ("GET", "/dashboard/me/"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--config", type=Path, default=Path("examples/config.yaml"))
    args = parser.parse_args()
    policy = Policy.from_config(load_config(args.config).rules)
    account = Account(1000001, "bob", "bob@example.com", "Bob")
    identity = Identity(Principal("gerrit_http_credentials", "bob", account=account), account, "gerrit")
    print(f"code: {Path(authz_server.__file__).parent}")
    for name, (method, path) in SHAPES.items():
        request = build_check_request(method, path, host="svc.example", scheme="https", headers=HEADERS)
        runs = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(args.n):
                inp = parse_check_request(request)
                try:
                    match = policy.match(inp)
                except Exception:  # a refusal is also an answer; its cost counts the same
                    match = None
                to_check_response(Decision("d", None, match.rule.name if match else "", identity), inp)
            runs.append((time.process_time() - start) / args.n * 1e6)
        print(f"{name:32s} {statistics.median(runs):7.2f} µs (min {min(runs):.2f})")


if __name__ == "__main__":
    main()
