"""A/B of the warm Check between this tree and an earlier revision, in one window of time.

    python bench/ab.py --base REV [--reps 6] [--n 20000] [-c 16] [--fill 0] [--out FILE]

On a shared 2-core machine Check/s moves by 10-30 % between runs minutes apart, more than most changes to the Check
path. So the three servers run side by side and take turns: the no-op Check server, gerrit-authz from ``REV``
(``git archive`` into a temporary directory, first on that server's ``PYTHONPATH``) and gerrit-authz from this
tree, each loaded by ghz with the same serialized Basic CheckRequest, ``--reps`` times in rotation. Reported per
server: median Check/s and server CPU per Check, and the medians' ratios (over the no-op, and this tree over
``REV``). Same settings as ``run.py`` (``--connections 2 --cpus 1``, 1 h TTLs, every Check a memo hit); only
127.0.0.1; every ghz run bounded by ``-n`` and a time cap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import REPO, WORK, Server, basic, check_request, ensure_ghz, ghz, write_protoset  # noqa: E402


def export(rev: str, into: Path) -> str:
    """``rev`` of this repository as files under ``into``; returns the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the earlier revision (anything git rev-parse takes)")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--n", type=int, default=20000, help="Checks per ghz run")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--fill", type=int, default=0, help="cache entries each gerrit-authz server holds")
    parser.add_argument("--cap", type=float, default=60.0, help="time cap (s) of each ghz run")
    parser.add_argument("--out", type=Path, help="also write the raw figures here (JSON)")
    args = parser.parse_args()

    ensure_ghz()
    WORK.mkdir(exist_ok=True)
    write_protoset(WORK / "authz.protoset")
    data = WORK / "check-basic.bin"
    data.write_bytes(check_request(basic(0)).SerializeToString())
    authz_args = ["serve-authz", "0", "--long-ttl", "--fill", str(args.fill)]
    with tempfile.TemporaryDirectory(prefix="gerrit-authz-base-") as base_tree:
        commit = export(args.base, Path(base_tree))
        servers = {
            "noop": Server("ab-noop", ["serve-noop", "0"]),
            "base": Server("ab-base", authz_args, env={"PYTHONPATH": base_tree}),
            "this": Server("ab-this", authz_args),
        }
        load = {"c": args.concurrency, "connections": 2, "cap": args.cap, "cpus": 1}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        try:
            for server in servers.values():
                ghz(server, data, n=max(1000, args.n // 10), **load)  # warm-up
            for rep in range(args.reps):
                for name, server in servers.items():
                    runs[name].append(ghz(server, data, n=args.n, **load))
                line = "  ".join(
                    f"{n} {r[-1]['rps']:.0f}/s {r[-1]['server_cpu_us_per_check']:.0f} us" for n, r in runs.items()
                )
                print(f"rep {rep + 1}: {line}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    median = {
        name: {
            "rps": statistics.median(r["rps"] for r in rs),
            "server_cpu_us_per_check": statistics.median(r["server_cpu_us_per_check"] for r in rs),
        }
        for name, rs in runs.items()
    }
    summary = {
        "base": commit,
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "median": median,
        "this_over_noop": round(median["this"]["rps"] / median["noop"]["rps"], 3),
        "base_over_noop": round(median["base"]["rps"] / median["noop"]["rps"], 3),
        "this_over_base": round(median["this"]["rps"] / median["base"]["rps"], 3),
        "cpu_this_over_base": round(
            median["this"]["server_cpu_us_per_check"] / median["base"]["server_cpu_us_per_check"], 3
        ),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary | {"runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
