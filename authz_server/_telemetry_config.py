"""``telemetry:`` in the config file, and how it combines with the standard ``OTEL_*`` environment variables.

Each key mirrors one variable of the OpenTelemetry SDK specification; a key set in the file wins over its variable,
a variable applies where the file is silent, and every other ``OTEL_*`` variable (``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_BSP_*``, ``OTEL_RESOURCE_ATTRIBUTES``...) is read by the SDK itself. Tracing is off unless
``traces_exporter`` or ``OTEL_TRACES_EXPORTER`` names an exporter (the SDK's own default, ``otlp``, is not applied:
a service must not start exporting because a library was installed), and ``OTEL_SDK_DISABLED=true`` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

__all__ = ["EXPORTERS", "PROTOCOLS", "SAMPLERS", "TelemetryConfig", "TelemetrySettings", "telemetry_settings"]

Exporter = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["grpc", "http/protobuf"]
Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
PROTOCOLS: tuple[str, ...] = get_args(OtlpProtocol)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
DEFAULT_SERVICE_NAME = "gerrit-authz"


class TelemetryConfig(BaseModel):
    """``telemetry:``: every key is optional; an unset key leaves its ``OTEL_*`` variable in charge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    traces_exporter: list[Exporter] | Exporter | None = None  # OTEL_TRACES_EXPORTER
    endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT (the base URL; /v1/traces is added for HTTP)
    protocol: OtlpProtocol | None = None  # OTEL_EXPORTER_OTLP_PROTOCOL
    service_name: str | None = Field(default=None, min_length=1)  # OTEL_SERVICE_NAME
    sampler: Sampler | None = None  # OTEL_TRACES_SAMPLER
    sampler_arg: float | None = Field(default=None, ge=0.0, le=1.0)  # OTEL_TRACES_SAMPLER_ARG


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What tracing runs with, once the file and the environment are combined. ``None`` fields: the SDK's own
    reading of its variables (or its default) applies."""

    exporters: tuple[str, ...]
    protocol: str
    service_name: str
    endpoint: str | None = None
    sampler: str | None = None
    sampler_arg: float | None = None


def _env(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-empty value, with its name (signal-specific variables come first)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value.lower() not in allowed:
        raise ConfigError([(name, f"must be one of {', '.join(allowed)}, not {value!r}")])
    return value.lower()


def telemetry_settings(config: TelemetryConfig, env: Mapping[str, str] | None = None) -> TelemetrySettings | None:
    """The tracing settings, or ``None`` when tracing is off. Raises :class:`ConfigError` naming the key or the
    variable that holds an unusable value."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters: tuple[str, ...]
    if config.traces_exporter is not None:
        listed = config.traces_exporter if isinstance(config.traces_exporter, list) else [config.traces_exporter]
        exporters = tuple(listed)
    elif found := _env(env, "OTEL_TRACES_EXPORTER"):
        name, value = found
        exporters = tuple(_choice(name, v.strip(), EXPORTERS) for v in value.split(",") if v.strip())
    else:
        return None
    exporters = tuple(e for e in dict.fromkeys(exporters) if e != "none")
    if not exporters:
        return None
    protocol: str = config.protocol or "grpc"
    if config.protocol is None and (
        found := _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    ):
        protocol = _choice(found[0], found[1], PROTOCOLS)
    sampler = config.sampler
    if sampler is None and (found := _env(env, "OTEL_TRACES_SAMPLER")):
        sampler = _choice(found[0], found[1], SAMPLERS)  # type: ignore[assignment]
    sampler_arg = config.sampler_arg
    if sampler_arg is None and (found := _env(env, "OTEL_TRACES_SAMPLER_ARG")):
        try:
            sampler_arg = float(found[1])
        except ValueError:
            raise ConfigError([(found[0], f"must be a number from 0 to 1, not {found[1]!r}")]) from None
        if not 0.0 <= sampler_arg <= 1.0:
            raise ConfigError([(found[0], f"must be a number from 0 to 1, not {found[1]!r}")])
    service = config.service_name or env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    return TelemetrySettings(exporters, protocol, service, config.endpoint, sampler, sampler_arg)
