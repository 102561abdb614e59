"""The gerrit-authz command line: serve, check-config, explain, --version."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ._app import build_components
from ._deadline import Deadline
from ._lint import lint_rules
from ._servicer import run_check
from .config import Config, load_config
from .errors import ConfigError

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One INFO line per Gerrit request would drown the audit lines (and costs time on cold paths).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # Records need no caller, thread or process lookups (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Without `serve` (which writes audit lines to stderr itself), the audit logger prints bare JSON lines.
    audit = logging.getLogger("gerrit_authz.audit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit.addHandler(handler)
    audit.propagate = False
    audit.setLevel(logging.INFO)


def _print_config_errors(exc: ConfigError, path: str) -> int:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for key, reason in exc.errors:
        print(f"  {key}: {reason}", file=sys.stderr)
    return 2


def _load_runnable(path: str) -> Config:
    """A valid config whose secret can be read now (so ``serve`` fails at start, not at the first Check)."""
    config = load_config(path)
    config.gerrit.password()
    return config


def _not_checked(config: Config) -> list[str]:
    """What check-config leaves to ``serve``: secrets and files it does not read, services it does not contact."""
    gerrit = config.gerrit
    lines = []
    try:
        gerrit.password()
        key, state = ("gerrit.password_env", "set") if gerrit.password_env else ("gerrit.password_file", "readable")
        lines.append(f"{key}: {state}, but not tried against Gerrit")
    except ConfigError as exc:  # the file is valid; the secret is the deployment's business
        lines += [f"{key}: {reason}" for key, reason in exc.errors]
    cache, server = config.cache, config.server
    files = [
        ("cache.credential_key_file", cache.credential_key_file),
        ("cache.redis_ca_file", cache.redis_ca_file),
        ("cache.redis_password_file", cache.redis_password_file),
        ("gerrit.ca_file", gerrit.ca_file),
        ("gerrit.client_cert_file", gerrit.client_cert_file),
        ("gerrit.client_key_file", gerrit.client_key_file),
    ]
    for where, tls in (("server.tls", server.tls), ("server.admin_tls", server.admin_tls)):
        if tls is not None:
            files += [(f"{where}.{k}", getattr(tls, k)) for k in ("cert_file", "key_file", "client_ca_file")]
    files += [(f"identity[{i}].jwt.ca_file", s.jwt.ca_file) for i, s in enumerate(config.identity) if s.jwt is not None]
    if gerrit.events is not None:
        files += [
            ("gerrit.events.private_key_file", gerrit.events.private_key_file),
            ("gerrit.events.known_hosts_file", gerrit.events.known_hosts_file),
        ]
    lines += [f"{key}: {path} not read" for key, path in files if path is not None]
    reach = [f"Gerrit at {gerrit.url}"]
    reach += [f"the OIDC issuer {s.jwt.issuer}" for s in config.identity if s.jwt is not None]
    if config.cache.backend == "redis":
        reach.append("Redis (cache.redis_url)")
    if gerrit.events is not None:
        reach.append(f"Gerrit's event stream at {gerrit.events.ssh_url}")
    lines.append("reachability of " + ", ".join(reach))
    return lines


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    for warning in lint_rules(config.rules):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.file}: OK ({len(config.rules)} rules, {len(config.identity)} identity sources, "
        f"cache {config.cache.backend})"
    )
    print("not checked (serve and explain do, at start-up and on use):")
    for line in _not_checked(config):
        print(f"  {line}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._server import serve

    config = _load_runnable(args.config)
    _setup_logging(args.log_level)
    return asyncio.run(serve(config, config_path=args.config))


def _parse_header(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'name: value', got {raw!r}")
    return name.strip().lower(), value.strip()


async def _explain(config: Config, args: argparse.Namespace) -> int:
    from gerrit_authz.v1 import admin_pb2
    from google.protobuf.json_format import MessageToDict

    from ._admin import check_request_from_explain, explain_response

    components = build_components(config)
    try:
        request = check_request_from_explain(
            admin_pb2.ExplainRequest(method=args.method, path=args.path, host=args.host, headers=dict(args.header))
        )
        decision, _ = await run_check(components.authorizer, request, Deadline.after(config.server.check_timeout))
        retry_after = max(1, round(config.server.retry_after))
        response = explain_response(decision, b"", retry_after)
        out = MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        out.pop("check_response", None)
        print(json.dumps(out, indent=2))
        return 0 if decision.allowed else 1
    finally:
        await components.aclose()


def _cmd_explain(args: argparse.Namespace) -> int:
    config = _load_runnable(args.config)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(_explain(config, args))


def _version() -> str:
    try:
        return version("gerrit-authz")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


_DESCRIPTION = (
    "Envoy ext_authz v3 gRPC service that authorizes HTTP requests with Gerrit's own answers "
    "(group membership, ref permissions, capabilities, change status)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gerrit-authz", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gerrit-authz {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the ext_authz gRPC service",
        description="Run the ext_authz gRPC service (with health and reflection) and the admin listener. "
        "Prints the bound addresses; SIGTERM drains in-flight Checks and exits 0.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration file")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the lowest level logged to stderr (default: info)",
    )
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser(
        "check-config",
        help="validate a configuration file (exit 2 when invalid)",
        description="Validate a configuration file. Exit 0 when valid; exit 2 listing the key path and reason "
        "of every error.",
    )
    check.add_argument("file", metavar="FILE", help="the YAML configuration file")
    check.set_defaults(func=_cmd_check_config)
    explain = sub.add_parser(
        "explain",
        help="decide one request and print the trace (exit 0 allow, 1 deny)",
        description="Decide one HTTP request as a Check would, against the real Gerrit, and print the decision "
        "with its trace as JSON. Exit 0 for allow, 1 for deny.",
    )
    explain.add_argument("--config", required=True, metavar="FILE", help="the YAML configuration file")
    explain.add_argument("--method", default="GET", help="the HTTP method (default: GET)")
    explain.add_argument("--path", required=True, help="the request path, with its query if any")
    explain.add_argument("--host", default="", help="the request's host (authority) header")
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        type=_parse_header,
        metavar="'NAME: VALUE'",
        help="a request header; repeat for several",
    )
    explain.set_defaults(func=_cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 deny for explain, 2 bad configuration)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _print_config_errors(exc, getattr(args, "config", None) or args.file)


if __name__ == "__main__":
    sys.exit(main())
