"""Tracing: settings from ``telemetry:`` and ``OTEL_*``, the missing extra, and the spans of a Check (a real gRPC
server, Gerrit played by httpx.MockTransport, spans kept by the SDK's in-memory exporter)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from _support.authz import check_request, check_stub
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz_server._app import build_components
from authz_server._audit import AuditLog
from authz_server._extras import OTEL_HINT, require_otel
from authz_server._server import AuthzServer, build_server, make_tracing
from authz_server._servicer import AuthorizationServicer
from authz_server._telemetry import CHECK_SPAN, Tracing
from authz_server._telemetry_config import TelemetryConfig, telemetry_settings
from authz_server.cli import main
from authz_server.config import parse_config
from authz_server.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "alice-secret-pw"
AUTH = {"authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{ENVOY_SPAN}-01"
HEADER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HEADER_TRACEPARENT = f"00-{HEADER_TRACE_ID}-b7ad6b7169203331-01"


def config_data(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    secret = tmp_path / "pw"
    secret.write_text("bot-password")
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None},
        "gerrit": {"url": "http://gerrit.invalid", "username": "bot", "password_file": str(secret)},
        "identity": [{"gerrit_http_credentials": {}}],
        "rules": [
            {"name": "health", "match": {"path": "/healthz"}, "require": "anyone"},
            {"name": "project-readers", "match": {"path": "/p/{project}"}, "require": {"group": "readers"}},
            {"name": "signed-in", "match": {"path_prefix": "/"}, "require": "authenticated"},
        ],
        **extra,
    }


# ---------------------------------------------------------------------------------------------------- settings


def test_off_by_default_and_when_disabled() -> None:
    assert telemetry_settings(TelemetryConfig(), {}) is None
    assert telemetry_settings(TelemetryConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) is None
    assert telemetry_settings(TelemetryConfig(), {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert telemetry_settings(TelemetryConfig(traces_exporter="otlp"), {"OTEL_SDK_DISABLED": "true"}) is None


def test_standard_variables_turn_it_on() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp,console",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "authz-eu",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    settings = telemetry_settings(TelemetryConfig(), env)
    assert settings is not None
    assert settings.exporters == ("otlp", "console") and settings.protocol == "http/protobuf"
    assert (settings.service_name, settings.sampler, settings.sampler_arg) == (
        "authz-eu",
        "parentbased_traceidratio",
        0.25,
    )
    assert settings.endpoint is None  # left to the SDK, which reads OTEL_EXPORTER_OTLP_ENDPOINT itself


def test_the_file_wins_over_the_variables() -> None:
    file = TelemetryConfig(traces_exporter="otlp", endpoint="http://collector:4317", protocol="grpc", service_name="x")
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "y"}
    settings = telemetry_settings(file, env)
    assert settings is not None
    assert (settings.exporters, settings.protocol, settings.service_name) == (("otlp",), "grpc", "x")
    assert settings.endpoint == "http://collector:4317"
    defaults = telemetry_settings(TelemetryConfig(traces_exporter="otlp"), {})
    assert defaults is not None and (defaults.protocol, defaults.service_name) == ("grpc", "gerrit-authz")


@pytest.mark.parametrize(
    ("name", "value"),
    [("OTEL_TRACES_EXPORTER", "jaeger"), ("OTEL_TRACES_SAMPLER", "sometimes"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
)
def test_a_bad_variable_is_a_config_error_naming_it(name: str, value: str) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", name: value}
    with pytest.raises(ConfigError) as err:
        telemetry_settings(TelemetryConfig(), env)
    assert err.value.errors[0][0] == name


def test_unknown_telemetry_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config_data(tmp_path, telemetry={"exporter": "otlp"}))
    assert ("telemetry.exporter", "unknown key") in err.value.errors


def test_missing_extra_is_a_config_error_naming_it() -> None:
    def without_sdk(name: str) -> Any:
        raise ModuleNotFoundError(name)

    with pytest.raises(ConfigError) as err:
        require_otel("telemetry.traces_exporter", import_module=without_sdk)
    assert err.value.errors == [("telemetry.traces_exporter", OTEL_HINT)]
    require_otel("telemetry.traces_exporter")  # installed here (the dev extra)


def test_check_config_exits_2_without_the_extra(tmp_path: Path) -> None:
    # A fresh interpreter where the SDK cannot be imported, as on a plain install; OTEL_* alone asks for tracing.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_data(tmp_path)))
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "sys.modules['opentelemetry.sdk.trace'] = None\n"
        "from authz_server import cli\n"
        "sys.exit(cli.main(['check-config', sys.argv[1]]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "otlp"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "OTEL_TRACES_EXPORTER: " + OTEL_HINT in out.stderr
    assert main(["check-config", str(path)]) == 0  # with the extra (this process) the same file is fine


def test_off_builds_no_tracer(tmp_path: Path) -> None:
    config = parse_config(config_data(tmp_path))
    assert make_tracing(config) is None
    assert build_components(config).tracing is None


async def test_off_never_reads_the_metadata(tmp_path: Path) -> None:
    """With tracing off a Check does no context extraction at all: the context double has no metadata to give."""

    class NoMetadata:
        def time_remaining(self) -> float | None:
            return None

    config = parse_config(config_data(tmp_path))
    servicer = AuthorizationServicer(build_components(config).authorizer, check_timeout=1.0, retry_after=5)
    response = await servicer.Check(check_request("GET", "/healthz", {"traceparent": TRACEPARENT}), NoMetadata())  # type: ignore[arg-type]
    assert response.status.code == 0


# ------------------------------------------------------------------------------------------------ a traced Check


class Gerrit:
    """Gerrit's REST API for alice (account 7, member of readers), counting requests."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("refused")
        body: Any
        if request.url.path == "/a/accounts/self":
            body = {"_account_id": 7, "username": "alice"}
        elif request.url.path == "/a/accounts/7/groups":
            body = [{"id": "readers-uuid", "name": "readers"}]
        else:
            return httpx.Response(404, text="Not found")
        return httpx.Response(200, text=")]}'\n" + json.dumps(body))


class Traced:
    def __init__(self, app: AuthzServer, exporter: InMemorySpanExporter, gerrit: Gerrit, lines: list[str]) -> None:
        self.app, self.exporter, self.gerrit, self.lines = app, exporter, gerrit, lines

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest_asyncio.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gerrit = Gerrit()
    config = parse_config(config_data(tmp_path))
    components = build_components(config, transport=httpx.MockTransport(gerrit), tracing=Tracing(provider))
    lines: list[str] = []
    app = build_server(config, components, audit=AuditLog(lines.append))
    await app.start()
    try:
        yield Traced(app, exporter, gerrit, lines)
    finally:
        await app.stop(grace=0)


def named(spans: list[ReadableSpan], predicate: Callable[[str], bool]) -> list[ReadableSpan]:
    return [s for s in spans if predicate(s.name)]


async def test_check_span_is_a_child_of_the_metadata_context_with_gerrit_children(traced: Traced) -> None:
    async with check_stub(traced.app.address) as stub:
        resp = await stub.Check(
            check_request("GET", "/p/platform", {**AUTH, "traceparent": HEADER_TRACEPARENT}),
            metadata=(("traceparent", TRACEPARENT),),
            timeout=5,
        )
    assert resp.status.code == 0
    spans = traced.spans()
    (check,) = named(spans, lambda n: n == CHECK_SPAN)
    assert check.kind == SpanKind.SERVER
    assert check.context is not None and check.parent is not None
    assert format(check.context.trace_id, "032x") == TRACE_ID  # the metadata wins over the request's header
    assert format(check.parent.span_id, "016x") == ENVOY_SPAN
    attrs = dict(check.attributes or {})
    assert attrs["gerrit_authz.rule"] == "project-readers" and attrs["gerrit_authz.code"] == ""
    assert (
        attrs["gerrit_authz.decision_id"]
        == {h.header.key: h.header.value for h in resp.ok_response.headers}["x-authz-decision-id"]
    )
    assert attrs["gerrit_authz.facts.gerrit"] == 1  # the group lookup
    (identity,) = named(spans, lambda n: n == "identity gerrit_http_credentials")
    assert identity.parent is not None and identity.parent.span_id == check.context.span_id
    gerrit = named(spans, lambda n: n.startswith("GET /a/"))
    assert sorted(s.name for s in gerrit) == ["GET /a/accounts", "GET /a/accounts"]
    by_path = {dict(s.attributes or {})["url.path"]: s for s in gerrit}
    assert by_path["/a/accounts/self"].parent.span_id == identity.context.span_id  # type: ignore[union-attr]
    assert by_path["/a/accounts/7/groups"].parent.span_id == check.context.span_id  # type: ignore[union-attr]
    assert all(s.kind == SpanKind.CLIENT and s.context.trace_id == check.context.trace_id for s in gerrit)  # type: ignore[union-attr]
    # Never a credential anywhere in a span.
    dumped = "".join(s.to_json() for s in spans)
    assert PASSWORD not in dumped and AUTH["authorization"].split()[1] not in dumped
    (line,) = traced.audit()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, format(check.context.span_id, "016x"))


async def test_cache_hits_are_attributes_not_spans(traced: Traced) -> None:
    async with check_stub(traced.app.address) as stub:
        for _ in range(2):
            await stub.Check(check_request("GET", "/p/platform", AUTH), timeout=5)
    checks = named(traced.spans(), lambda n: n == CHECK_SPAN)
    assert len(checks) == 2 and len(traced.gerrit.paths) == 2  # the second Check asked Gerrit nothing
    second = dict(checks[1].attributes or {})
    assert second["gerrit_authz.facts.cache"] == 1 and second["gerrit_authz.account_source"] == "cache"
    assert len(named(traced.spans(), lambda n: n.startswith("GET "))) == 2
    # Without any context from the caller: a new trace (a root span), still audited with its ids.
    assert checks[1].parent is None
    assert traced.audit()[1]["trace_id"] == format(checks[1].context.trace_id, "032x")  # type: ignore[union-attr]


async def test_the_request_header_parents_when_the_metadata_has_none(traced: Traced) -> None:
    async with check_stub(traced.app.address) as stub:
        await stub.Check(check_request("GET", "/healthz", {"traceparent": HEADER_TRACEPARENT}), timeout=5)
    (check,) = traced.spans()
    assert format(check.context.trace_id, "032x") == HEADER_TRACE_ID  # type: ignore[union-attr]


async def test_an_outage_is_an_error_span_with_an_error_child(traced: Traced) -> None:
    traced.gerrit.down = True
    async with check_stub(traced.app.address) as stub:
        resp = await stub.Check(check_request("GET", "/p/platform", AUTH), timeout=5)
    assert resp.error_response.status.code == 503
    spans = traced.spans()
    (check,) = named(spans, lambda n: n == CHECK_SPAN)
    assert check.status.status_code == StatusCode.ERROR
    assert dict(check.attributes or {})["gerrit_authz.code"] == "gerrit_unavailable"
    (call,) = named(spans, lambda n: n.startswith("GET "))
    assert call.status.status_code == StatusCode.ERROR and call.status.description == "ConnectError"


def test_a_telemetry_change_needs_a_restart(tmp_path: Path) -> None:
    from authz_server._reload import needs_restart

    old = parse_config(config_data(tmp_path))
    new = parse_config(config_data(tmp_path, telemetry={"traces_exporter": "none"}))
    assert needs_restart(old, new) == ["telemetry"]
    assert needs_restart(old, parse_config(config_data(tmp_path))) == []
    outages = parse_config(
        config_data(tmp_path, server={"listen": "127.0.0.1:0", "admin_listen": None, "outages": "deny"})
    )
    assert needs_restart(old, outages) == ["server.outages"]


def test_otlp_over_http_without_its_exporter_is_a_config_error(tmp_path: Path) -> None:
    # opentelemetry-exporter-otlp-proto-http is not part of the otel extra (nor installed here).
    data = config_data(tmp_path, telemetry={"traces_exporter": "otlp", "protocol": "http/protobuf"})
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    ((key, reason),) = err.value.errors
    assert key == "telemetry.traces_exporter" and "opentelemetry-exporter-otlp-proto-http" in reason
    # The console exporter needs no OTLP package at all.
    parse_config(config_data(tmp_path, telemetry={"traces_exporter": "console", "protocol": "http/protobuf"}))


@pytest.mark.parametrize(
    ("sampler", "arg", "want"),
    [
        ("always_off", None, "AlwaysOffSampler"),
        ("traceidratio", 0.5, "TraceIdRatioBased{0.5}"),
        ("parentbased_always_off", None, "ParentBased{root:AlwaysOffSampler,"),
        ("parentbased_traceidratio", 0.1, "ParentBased{root:TraceIdRatioBased{0.1},"),
    ],
)
def test_the_sampler_is_the_one_asked_for(sampler: str, arg: float | None, want: str) -> None:
    from authz_server._telemetry import start_tracing

    settings = telemetry_settings(TelemetryConfig(traces_exporter="console", sampler=sampler, sampler_arg=arg), {})  # type: ignore[arg-type]
    assert settings is not None
    tracing = start_tracing(settings)
    try:
        assert (tracing.provider.sampler.get_description() + ",").startswith(want)
        assert tracing.provider.resource.attributes["service.name"] == "gerrit-authz"
    finally:
        tracing.shutdown()


async def test_a_reload_keeps_tracing_on_a_new_http_client(tmp_path: Path) -> None:
    from authz_server._reload import LiveRuntime
    from authz_server._telemetry import _TracedTransport

    tracing = Tracing(TracerProvider())
    config = parse_config(config_data(tmp_path))
    runtime = LiveRuntime(build_components(config, tracing=tracing), retire_after=0.0)
    data = config_data(tmp_path)
    data["gerrit"]["max_connections"] = 7  # a new pooled client
    new = await runtime.apply(parse_config(data))
    try:
        assert new.tracing is tracing
        assert isinstance(new.http._transport, _TracedTransport)
    finally:
        await runtime.aclose()
