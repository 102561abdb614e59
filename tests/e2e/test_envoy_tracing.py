"""One trace from Envoy to Gerrit: real Envoy 1.40 with its OpenTelemetry tracer, gerrit-authz with tracing on,
real Gerrit; both export OTLP/gRPC to one in-test receiver. What it received (one run):

    envoy  ingress                                           (SERVER, root)
    envoy  async envoy.service.auth.v3.Authorization.Check egress   (CLIENT)
    authz  envoy.service.auth.v3.Authorization/Check         (SERVER)
    authz    identity gerrit_http_credentials
    authz      GET /a/accounts                               (CLIENT: /a/accounts/self, the caller's Basic)
    authz    GET /a/projects                                 (CLIENT: .../check.access)

The trace holds Envoy's request span (the root), Envoy's ext_authz span below it, gerrit-authz's Check span as a
child of that ext_authz span (the parent comes from the ``traceparent`` Envoy puts in the Check's gRPC metadata),
and the Gerrit lookups gerrit-authz made, below the Check.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support.authz import basic, make_config, running_server
from _support.envoy import EchoUpstream, EnvoyProcess, example_bootstrap, hcm_of, listener_named, point_cluster
from _support.otlp import OtlpReceiver, ReceivedSpan

from authz_server._telemetry import CHECK_SPAN
from authz_server.config import TelemetryConfig

pytestmark = [pytest.mark.gerrit, pytest.mark.envoy]

ARTIFACT = "/artifacts/platform%2Fbuild/-/main/out/app.tar"
POLL_S = 20.0
SERVER, CLIENT = 2, 3  # OTLP span kinds


def with_tracer(bootstrap: dict[str, Any], receiver: str) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer on the ingress listener, exporting to ``receiver``, every request sampled,
    spans flushed every 100 ms (runtime keys of the tracer)."""
    clusters = bootstrap["static_resources"]["clusters"]
    otlp = copy.deepcopy(next(c for c in clusters if c["name"] == "gerrit_authz"))  # an HTTP/2 STATIC cluster
    otlp["name"] = otlp["load_assignment"]["cluster_name"] = "otlp"
    clusters.append(otlp)
    point_cluster(bootstrap, "otlp", receiver)
    hcm_of(listener_named(bootstrap, "ingress"))["tracing"] = {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "1s"},
                "service_name": "envoy",
            },
        },
    }
    bootstrap["layered_runtime"] = {
        "layers": [
            {
                "name": "otel",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 100,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }
    return bootstrap


def wait_for(otlp: OtlpReceiver, check: Any) -> None:
    deadline = time.monotonic() + POLL_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)


async def test_one_trace_from_envoy_through_the_check_to_gerrit(gerrit: Any, tmp_path: Path) -> None:
    carol = gerrit.org.carol
    secret = tmp_path / "gerrit-password"
    secret.write_text(gerrit.org.bot.http_password)
    config = make_config(gerrit.server.url, secret, identity=[{"gerrit_http_credentials": {}}])
    async with OtlpReceiver() as otlp:
        telemetry = TelemetryConfig(traces_exporter="otlp", endpoint=f"http://{otlp.address}", service_name="authz")
        config = config.model_copy(update={"telemetry": telemetry})
        with EchoUpstream() as echo:
            async with running_server(config) as app:
                bootstrap = example_bootstrap()
                point_cluster(bootstrap, "gerrit_authz", app.address)
                point_cluster(bootstrap, "upstream", echo.address)
                envoy = await asyncio.to_thread(EnvoyProcess(with_tracer(bootstrap, otlp.address), tmp_path).start)
                try:
                    async with httpx.AsyncClient(timeout=15) as client:
                        resp = await client.get(
                            envoy.url() + ARTIFACT,
                            headers={"authorization": basic(carol.username, carol.http_password)},
                        )
                    assert resp.status_code == 200, (resp.status_code, resp.text)

                    def envoy_exported() -> bool:
                        return any(s.service == "envoy" for s in otlp.spans)

                    await asyncio.to_thread(wait_for, otlp, envoy_exported)
                finally:
                    await asyncio.to_thread(envoy.stop)
            # Leaving running_server shut tracing down: gerrit-authz's batch processor has exported everything.
        spans = list(otlp.spans)

    (check,) = [s for s in spans if s.service == "authz" and s.name == CHECK_SPAN]
    trace = [s for s in spans if s.trace_id == check.trace_id]
    by_id = {s.span_id: s for s in trace}
    ext_authz = by_id.get(check.parent_span_id)
    assert ext_authz is not None, f"the Check's parent is not in the trace: {describe(spans)}"
    assert ext_authz.service == "envoy" and ext_authz.kind == CLIENT  # Envoy's span for its call to us
    request = by_id.get(ext_authz.parent_span_id)
    assert request is not None and request.service == "envoy" and request.kind == SERVER, describe(trace)
    assert request.parent_span_id == ""  # the request's span is the root of the trace
    assert check.attributes["gerrit_authz.rule"] == "read-artifacts"
    assert check.attributes["gerrit_authz.code"] == ""
    decision_id = resp.json()["headers"]["x-authz-decision-id"]
    assert check.attributes["gerrit_authz.decision_id"] == decision_id
    # The Gerrit lookups, each a CLIENT span below the Check (directly, or under the identity verification).
    lookups = [s for s in trace if s.service == "authz" and s.kind == CLIENT]
    paths = {s.attributes["url.path"] for s in lookups}
    assert "/a/accounts/self" in paths  # carol's Basic credential, verified by Gerrit
    assert any(p.endswith("/check.access") for p in paths), paths
    for lookup in lookups:
        assert below(lookup, check, by_id), describe(trace)
        assert lookup.attributes["server.address"] == httpx.URL(gerrit.server.url).host
        assert lookup.attributes["http.response.status_code"] == 200
    identity = [s for s in trace if s.name == "identity gerrit_http_credentials"]
    assert len(identity) == 1 and identity[0].parent_span_id == check.span_id
    assert carol.http_password not in repr(spans)


def below(span: ReceivedSpan, ancestor: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> bool:
    parent = by_id.get(span.parent_span_id)
    while parent is not None:
        if parent.span_id == ancestor.span_id:
            return True
        parent = by_id.get(parent.parent_span_id)
    return False


def describe(spans: list[ReceivedSpan]) -> str:
    return "\n".join(f"{s.service} {s.name} {s.span_id} <- {s.parent_span_id} kind={s.kind}" for s in spans)
