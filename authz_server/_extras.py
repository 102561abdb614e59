"""Optional extras of the distribution: whether the one a configuration chooses is installed.

``pip install gerrit-authz`` alone serves with the memory cache; the Redis backend needs ``gerrit-authz[redis]``,
OpenTelemetry tracing ``gerrit-authz[otel]``.
Checking here, at configuration time, turns a missing extra into a config error (exit 2) instead of an
``ImportError`` at the first Check.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from types import ModuleType

from .errors import ConfigError

__all__ = ["OTEL_HINT", "OTEL_SHADOWED_HINT", "REDIS_HINT", "require_otel", "require_redis"]

REDIS_HINT = "backend redis needs the redis extra: pip install 'gerrit-authz[redis]'"

OTEL_HINT = "tracing needs the otel extra: pip install 'gerrit-authz[otel]'"
OTEL_HTTP_HINT = "OTLP over http/protobuf needs: pip install opentelemetry-exporter-otlp-proto-http"
_OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
_OTEL_HTTP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
# xds-protos ships an older copy of the OpenTelemetry protos in the same package (Envoy's API imports them); when it
# is installed after opentelemetry-proto, its files win and the OTLP exporter cannot import.
_OTEL_PROTO = "opentelemetry.proto.common.v1.common_pb2"
OTEL_SHADOWED_HINT = (
    "the otel extra is installed, but xds-protos' older copy of the OpenTelemetry protos shadows opentelemetry-proto "
    "(installed after it): pip install --force-reinstall --no-deps opentelemetry-proto"
)

# aiocache exports its Redis backend only when the redis client imports, so both are needed.
_REDIS_MODULES = ("redis.asyncio", "aiocache.backends.redis")


def require_redis(import_module: Callable[[str], ModuleType] = importlib.import_module) -> None:
    """Raise :class:`ConfigError` at ``cache.backend`` unless the Redis backend can be imported.

    ``import_module`` is the seam tests use to play a machine without the extra.
    """
    for name in _REDIS_MODULES:
        try:
            import_module(name)
        except ImportError:
            raise ConfigError([("cache.backend", REDIS_HINT)]) from None


def require_otel(
    key: str, *, http: bool = False, import_module: Callable[[str], ModuleType] = importlib.import_module
) -> None:
    """Raise :class:`ConfigError` at ``key`` unless tracing (and, with ``http``, OTLP over HTTP) can be imported."""
    for name in _OTEL_MODULES:
        try:
            import_module(name)
        except ImportError:
            raise ConfigError([(key, _otel_hint(import_module))]) from None
    if http:
        try:
            import_module(_OTEL_HTTP_MODULE)
        except ImportError:
            raise ConfigError([(key, OTEL_HTTP_HINT)]) from None


def _otel_hint(import_module: Callable[[str], ModuleType]) -> str:
    """Why tracing cannot be imported: the extra is missing, or its protos are shadowed by xds-protos' copy."""
    try:
        proto = import_module(_OTEL_PROTO)  # without the extra, this may be xds-protos' copy
        importlib.metadata.version("opentelemetry-proto")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return OTEL_HINT
    return OTEL_HINT if hasattr(proto, "InstrumentationScope") else OTEL_SHADOWED_HINT
