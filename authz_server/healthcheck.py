"""``python -m authz_server.healthcheck [--cacert F [--cert F --key F] [--servername N]] HOST:PORT``: exit 0 when
the gRPC health service says SERVING.

For container HEALTHCHECKs and Kubernetes exec probes, without shipping a grpc_health_probe binary. With
``--cacert`` it speaks TLS (the listener's ``server.tls``), presenting ``--cert``/``--key`` when the listener
requires client certificates; the kubelet's native gRPC probe cannot do either.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["main"]


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.cacert is None:
        return grpc.insecure_channel(args.target)
    key = Path(args.key).read_bytes() if args.key else None
    cert = Path(args.cert).read_bytes() if args.cert else None
    credentials = grpc.ssl_channel_credentials(Path(args.cacert).read_bytes(), key, cert)
    options = [("grpc.ssl_target_name_override", args.servername)] if args.servername else []
    return grpc.secure_channel(args.target, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz_server.healthcheck", description=__doc__)
    parser.add_argument("target", nargs="?", default="127.0.0.1:9001", help="HOST:PORT (default 127.0.0.1:9001)")
    parser.add_argument("--cacert", help="CA of the listener's certificate: speak TLS")
    parser.add_argument("--cert", help="client certificate (PEM), for a listener with client_ca_file")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--servername", help="the name to check the server's certificate against")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if (args.cert is None) != (args.key is None) or (args.cert and not args.cacert):
        parser.error("--cert and --key go together, with --cacert")
    try:
        channel = _channel(args)
    except OSError as exc:
        print(f"unhealthy: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
