"""install_openapi_security: the example app's OpenAPI document (schema-checked) lists HTTP Bearer and Basic,
and /docs is served. The uvicorn TLS protocol: a verified client certificate's SPIFFE URI reaches the Check as
``source.principal`` through a real uvicorn with ``ssl_cert_reqs``; plain HTTP sends none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _support.tls import TestCA
from fastapi import FastAPI, Request
from fastapi_support import asgi_client, example_module, uvicorn_server
from openapi_spec_validator import validate

from fastapi_client import AuthzMiddleware, install_openapi_security
from fastapi_client.testing import FakeAuthorizer


async def test_example_app_openapi_lists_the_schemes() -> None:
    app = example_module().create_app("127.0.0.1:1")  # nothing listens there: /docs and /openapi.json are public
    async with asgi_client(app) as client:
        doc = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    validate(doc)
    assert doc["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "basicAuth": {"type": "http", "scheme": "basic", "description": "Gerrit username and HTTP password"},
    }
    get = doc["paths"]["/artifacts/{project}/-/{branch}/{file}"]["get"]
    assert get["security"] == [{"bearerAuth": []}, {"basicAuth": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


def test_schemes_follow_the_identity_sources() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, str]:
        return {}

    install_openapi_security(app, ["mtls", "envoy_jwt_metadata", "jwt"])
    doc = app.openapi()
    validate(doc)
    assert list(doc["components"]["securitySchemes"]) == ["mutualTLS", "bearerAuth"]
    assert doc["paths"]["/x"]["get"]["security"] == [{"mutualTLS": []}, {"bearerAuth": []}]
    with pytest.raises(ValueError, match="unknown identity source"):
        install_openapi_security(FastAPI(), ["kerberos"])


# -- client certificates through a real uvicorn -------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthorizer]:
    async with FakeAuthorizer() as f:
        f.allow(username="ci-deployer")
        yield f


def tls_app(target: str) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, Any]:
        return {"ok": True}

    app.add_middleware(AuthzMiddleware, target=target)
    return app


async def test_verified_client_certificate_is_the_source_principal(fake: FakeAuthorizer, tmp_path: Any) -> None:
    pki = TestCA(tmp_path)
    ci = pki.issue("ci", uri="spiffe://corp.example/ci/ci-deployer")
    async with uvicorn_server(tls_app(fake.target), pki) as base:
        async with httpx.AsyncClient(verify=pki.client_context(ci), timeout=10) as client:
            assert (await client.get(base + "/who")).status_code == 200
        async with httpx.AsyncClient(verify=pki.client_context(None), timeout=10) as client:
            assert (await client.get(base + "/who")).status_code == 200  # optional: no certificate offered
    principals = [r.attributes.source.principal for r in fake.requests]
    assert principals == ["spiffe://corp.example/ci/ci-deployer", ""]


async def test_plain_uvicorn_sends_no_principal(fake: FakeAuthorizer) -> None:
    async with uvicorn_server(tls_app(fake.target)) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/who")).status_code == 200
    assert [r.attributes.source.principal for r in fake.requests] == [""]
