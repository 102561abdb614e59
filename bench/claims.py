"""What a ``claim`` requirement costs next to ``authenticated``: neither asks Gerrit, so the difference is the
claim lookup and match itself.

One warm JWT identity, the Authorizer called directly (no gRPC), N decisions per rule, three alternating rounds
(median), in-process OIDC double (``gerrit_double``). Prints microseconds per decision and the ratio.

    python bench/claims.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gerrit_double  # noqa: E402
import servers  # noqa: E402

from authz_server._app import build_components  # noqa: E402
from authz_server._deadline import Deadline  # noqa: E402
from authz_server._input import CheckInput  # noqa: E402
from authz_server.config import parse_config  # noqa: E402

PATH = "/artifacts/{project}/-/{branch}/{file:path}"
REQUIREMENTS: dict[str, Any] = {
    "authenticated": "authenticated",
    "claim contains (scope words)": {"claim": {"name": "scope", "contains": "deploy:{project}"}},
    "claim any_of (nested list)": {"claim": {"name": "realm_access.roles", "any_of": ["deployer", "admin"]}},
    "not claim (absent claim)": {"not": {"claim": {"name": "groups", "contains": "contractors"}}},
}


def config_for(requirement: Any) -> Any:
    data = yaml.safe_load(servers.EXAMPLE_CONFIG.read_text())
    data["server"].update({"listen": "127.0.0.1:0", "admin_listen": None})
    data["cache"]["ttl"] = {k: "1h" for k in ("account", "credentials", "groups", "capabilities", "access")}
    data["rules"] = [{"name": "bench", "match": {"path": PATH}, "require": requirement}]
    os.environ[data["gerrit"]["password_env"]] = gerrit_double.SERVICE_PASSWORD
    return parse_config(data)


def token(key: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": gerrit_double.ISSUER,
        "aud": "gerrit-authz-demo",
        "sub": "user0",
        "email": gerrit_double.user_email(0),
        "iat": now,
        "exp": now + 3600,
        "scope": "openid read deploy:platform/build",
        "realm_access": {"roles": ["viewer", "deployer"]},
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-1"})


async def per_decision(requirement: Any, bearer: str, jwk: dict[str, Any], n: int) -> tuple[float, bool]:
    double = gerrit_double.GerritDouble(jwk=jwk)
    components = build_components(config_for(requirement), transport=double.transport())
    inp = CheckInput(
        method="GET",
        path="/artifacts/platform%2Fbuild/-/main/out/app.tar",
        query="",
        host="svc.local",
        scheme="https",
        headers={"authorization": f"Bearer {bearer}"},
    )
    decide = components.authorizer.decide
    for _ in range(10):  # warm the JWKS, the claims cache and the Gerrit answers
        decision = await decide(inp, Deadline.after(5))
    t0 = time.perf_counter()
    for _ in range(n):
        decision = await decide(inp, Deadline.after(5))
    elapsed = time.perf_counter() - t0
    await components.aclose()
    if not decision.allowed:
        print(f"  ({requirement!r}: {decision.reason})", file=sys.stderr)
    return elapsed / n * 1e6, decision.allowed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    key, jwk = servers._signing_key()
    bearer = token(key)
    rounds: dict[str, list[float]] = {name: [] for name in REQUIREMENTS}
    allowed: dict[str, bool] = {}
    for _ in range(3):
        for name, req in REQUIREMENTS.items():
            us, allowed[name] = await per_decision(req, bearer, jwk, args.n)
            rounds[name].append(us)
    results = {name: (sorted(v)[1], allowed[name]) for name, v in rounds.items()}
    base = results["authenticated"][0]
    print("| requirement | µs/decision | ratio to authenticated | allowed |")
    print("|---|---|---|---|")
    for name, (us, allowed) in results.items():
        print(f"| {name} | {us:.1f} | {us / base:.2f} | {allowed} |")
    print(json.dumps({k: round(v[0], 2) for k, v in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
