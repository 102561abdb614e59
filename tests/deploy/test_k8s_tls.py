"""The transport-security deployment artefacts: the deploy/kubernetes-tls overlay (cert-manager certificates,
mTLS on both listeners and Envoy's cluster, NetworkPolicy, gerrit.events and metrics), and the Istio and Envoy
Gateway integrations in deploy/kubernetes/{istio,envoy-gateway}.

- Core kinds: ``kubernetes-validate`` in strict mode, as tests/deploy/test_packaging.py does for the base.
- cert-manager and Istio kinds: the pydantic models ``cloudcoil-models-cert-manager`` (1.17) and
  ``cloudcoil-models-istio`` (1.24) generate from those projects' CRD OpenAPI schemas (types, enums, required
  fields), plus a walk that refuses any key the schema does not know (the models themselves ignore unknown keys).
- Envoy Gateway kinds and Istio's mesh config (no schema package available offline): structural checks of the
  fields used, named below.
- The generated ConfigMaps are what scripts/k8s_tls_overlay.py writes from the base; gerrit-authz's config
  passes the caller-trust rule; Envoy's bootstrap passes ``envoy --mode validate`` with real certificate files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _support.envoy import find_envoy
from _support.tls import TestCA
from pydantic import BaseModel, RootModel

from authz_server.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "kubernetes-tls"
ISTIO = ROOT / "deploy" / "kubernetes" / "istio"
GATEWAY = ROOT / "deploy" / "kubernetes" / "envoy-gateway"
TIMEOUT = 120


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


# ------------------------------------------------------------------------------------------ schema validation


def unknown_keys(instance: Any, data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that the validated pydantic ``instance`` has no field for, recursively."""
    if isinstance(instance, RootModel):
        return unknown_keys(instance.root, data, path)
    if isinstance(instance, BaseModel):
        if not isinstance(data, dict):
            return []
        fields = {(f.alias or name): name for name, f in type(instance).model_fields.items()}
        out = []
        for key, value in data.items():
            if key not in fields:
                out.append(f"{path}.{key}".lstrip("."))
            else:
                out += unknown_keys(getattr(instance, fields[key]), value, f"{path}.{key}")
        return out
    if isinstance(instance, list) and isinstance(data, list):
        return [
            k for i, (a, b) in enumerate(zip(instance, data, strict=False)) for k in unknown_keys(a, b, f"{path}[{i}]")
        ]
    if isinstance(instance, dict) and isinstance(data, dict):
        return [k for key in data if key in instance for k in unknown_keys(instance[key], data[key], f"{path}.{key}")]
    return []


def crd_errors(doc: dict[str, Any]) -> list[str]:
    from cloudcoil.models.cert_manager import v1 as cert_manager
    from cloudcoil.models.istio.security import v1 as istio_security

    models = {
        ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
        ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
        ("security.istio.io/v1", "AuthorizationPolicy"): istio_security.AuthorizationPolicy,
        ("security.istio.io/v1", "PeerAuthentication"): istio_security.PeerAuthentication,
    }
    model = models[(doc["apiVersion"], doc["kind"])]
    try:
        instance = model.model_validate(doc)
    except Exception as exc:  # pydantic.ValidationError: say which object
        return [f"{doc['kind']}/{doc['metadata']['name']}: {exc}"]
    return [f"{doc['kind']}/{doc['metadata']['name']}: unknown key {k}" for k in unknown_keys(instance, doc)]


def core_errors(docs: list[dict[str, Any]]) -> list[str]:
    import kubernetes_validate as kv

    errors = []
    for doc in docs:
        try:
            kv.validate(doc, kv.latest_version(), strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


CRD_GROUPS = ("cert-manager.io/", "security.istio.io/")


def test_overlay_objects_validate(rendered: list[dict[str, Any]]) -> None:
    core = [d for d in rendered if not d["apiVersion"].startswith(CRD_GROUPS)]
    crds = [d for d in rendered if d["apiVersion"].startswith(CRD_GROUPS)]
    assert {d["kind"] for d in crds} == {"Certificate", "Issuer"}
    assert not core_errors(core)
    assert not [e for d in crds for e in crd_errors(d)]


def test_schema_checks_can_fail() -> None:
    certificate = _one(_docs(OVERLAY / "certificates.yaml"), "Certificate", "gerrit-authz-tls")
    typo = {**certificate, "spec": {**certificate["spec"], "dnsName": ["x"]}}
    assert crd_errors(typo) == ["Certificate/gerrit-authz-tls: unknown key spec.dnsName"]
    bad_usage = {**certificate, "spec": {**certificate["spec"], "usages": ["server-auth"]}}
    assert crd_errors(bad_usage)
    policy = _docs(ISTIO / "authorization-policy.yaml")[0]
    assert crd_errors({**policy, "spec": {**policy["spec"], "action": "EXTERNAL"}})


def test_generated_configmaps_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s_tls_overlay.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_gerrit_authz_config_is_mtls_on_both_listeners(rendered: list[dict[str, Any]]) -> None:
    data = yaml.safe_load(_one(rendered, "ConfigMap", "gerrit-authz-config")["data"]["config.yaml"])
    config = parse_config(data)  # the caller-trust rule accepts it: both listeners off loopback, with client CAs
    server = config.server
    assert server.tls is not None and server.tls.client_ca_file is not None and server.tls.allowed_callers
    assert server.admin_tls is not None and server.admin_tls.client_ca_file is not None
    assert server.metrics_listen == "0.0.0.0:9090" and config.gerrit.events is not None
    # The SANs allowed are the ones the Certificates carry.
    certs = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Certificate"}
    assert server.tls.allowed_callers == certs["envoy-client-tls"]["spec"]["uris"]
    assert server.admin_tls.allowed_callers == certs["gerrit-authz-operator-alice"]["spec"]["uris"]
    # The files it reads are mounted from the Secrets cert-manager and the operator fill.
    deployment = _one(rendered, "Deployment", "gerrit-authz")
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert str(server.tls.cert_file).startswith(mounts["tls"] + "/")
    assert volumes["tls"]["secret"]["secretName"] == certs["gerrit-authz-tls"]["spec"]["secretName"]
    assert str(config.gerrit.events.private_key_file).startswith(mounts["ssh"] + "/")
    assert volumes["ssh"]["secret"]["secretName"] == "gerrit-authz-ssh"
    assert not any("subPath" in m for m in _container(deployment)["volumeMounts"])  # so rotation reaches the pod
    assert {(p["name"], p["containerPort"]) for p in _container(deployment)["ports"]} == {
        ("grpc", 9001),
        ("admin", 9002),
        ("metrics", 9090),
    }
    assert "grpc" not in _container(deployment)["readinessProbe"]  # the kubelet's gRPC probe cannot do mTLS
    resources = _container(deployment)["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]


def test_network_policy_admits_check_from_envoy_and_admin_from_operators(rendered: list[dict[str, Any]]) -> None:
    policy = _one(rendered, "NetworkPolicy", "gerrit-authz")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gerrit-authz"}
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {"grpc", "admin", "metrics"}
    assert by_port["grpc"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}]
    assert list(by_port["admin"][0]) == ["namespaceSelector"]
    envoy = _one(rendered, "Deployment", "envoy")["spec"]["template"]["metadata"]["labels"]
    assert envoy["app.kubernetes.io/name"] == "envoy"


@pytest.mark.envoy
def test_envoy_bootstrap_with_mtls_cluster_validates(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    envoy = find_envoy()
    assert envoy is not None
    data = _one(rendered, "ConfigMap", "envoy-config")["data"]
    # The paths the pod mounts, here in a directory of real files.
    pki = TestCA(tmp_path)
    client = pki.issue("envoy", uri="spiffe://gerrit-authz.example/envoy")
    files = {"tls.crt": client.cert, "tls.key": client.key, "ca.crt": pki.cert}
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name, source in files.items():
        (tls_dir / name).write_bytes(source.read_bytes())
    texts = {name: text.replace("/etc/envoy/tls", str(tls_dir)) for name, text in data.items()}
    for name, text in texts.items():
        (tmp_path / name).write_text(text.replace("/etc/envoy/", f"{tmp_path}/"))
    cluster = next(
        c for c in yaml.safe_load(texts["envoy.yaml"])["static_resources"]["clusters"] if c["name"] == "gerrit_authz"
    )
    context = cluster["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["alpn_protocols"] == ["h2"] and context["sni"] == "gerrit-authz"
    proc = subprocess.run(
        [envoy, "--mode", "validate", "--config-path", str(tmp_path / "envoy.yaml"), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_istio_integration() -> None:
    docs = [d for path in sorted(ISTIO.glob("*.yaml")) for d in _docs(path)]
    crds = [d for d in docs if d["apiVersion"].startswith("security.istio.io/")]
    assert not [e for d in crds for e in crd_errors(d)]
    assert not core_errors([d for d in docs if d["apiVersion"] == "v1"])
    mesh = yaml.safe_load(_one(docs, "ConfigMap", "istio")["data"]["mesh"])
    (provider,) = mesh["extensionProviders"]
    # Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider (no CRD: a structural check).
    known = {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck", "clearRouteCache"}
    grpc_provider = provider["envoyExtAuthzGrpc"]
    assert set(grpc_provider) <= known and {"service", "port"} <= set(grpc_provider)
    assert grpc_provider["failOpen"] is False and grpc_provider["port"] == 9001
    custom = _one(docs, "AuthorizationPolicy", "gerrit-authz-ext-authz")["spec"]
    assert custom["action"] == "CUSTOM" and custom["provider"]["name"] == provider["name"]
    assert _one(docs, "PeerAuthentication", "gerrit-authz")["spec"]["mtls"]["mode"] == "STRICT"
    # The gerrit-authz configuration the comments describe: plaintext, callers authenticated by the mesh.
    base = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    base["server"].update(listen="0.0.0.0:9001", caller_authentication="mesh")
    base["identity"] = [{"envoy_jwt_metadata": {}}, *base["identity"]]
    assert parse_config(base).server.caller_authentication == "mesh"


def test_envoy_gateway_integration() -> None:
    docs = [d for path in sorted(GATEWAY.glob("*.yaml")) for d in _docs(path)]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert kinds == {
        ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ("gateway.networking.k8s.io/v1alpha3", "BackendTLSPolicy"),
    }
    # Structural checks of the fields used (Envoy Gateway's and Gateway API's CRD schemas are not available
    # offline as a package): the SecurityPolicy's extAuth names the gerrit-authz gRPC port and fails closed.
    policy = _one(docs, "SecurityPolicy", "gerrit-authz")["spec"]
    assert set(policy) == {"targetRefs", "extAuth"}
    assert set(policy["extAuth"]) <= {"grpc", "http", "failOpen", "headersToExtAuth", "bodyToExtAuth", "recomputeRoute"}
    (backend,) = policy["extAuth"]["grpc"]["backendRefs"]
    assert (backend["name"], backend["port"]) == ("gerrit-authz", 9001) and policy["extAuth"]["failOpen"] is False
    assert all(set(ref) == {"group", "kind", "name"} for ref in policy["targetRefs"])
    grant = _one(docs, "ReferenceGrant", "gerrit-authz-from-apps")
    assert grant["metadata"]["namespace"] == backend["namespace"]
    assert (
        grant["spec"]["from"][0]["namespace"] == _one(docs, "SecurityPolicy", "gerrit-authz")["metadata"]["namespace"]
    )
    tls = _one(docs, "BackendTLSPolicy", "gerrit-authz")["spec"]
    assert set(tls) == {"targetRefs", "validation"} and set(tls["validation"]) == {"caCertificateRefs", "hostname"}
    assert tls["validation"]["hostname"] == "gerrit-authz"
    client = _one(docs, "EnvoyProxy", "gerrit-authz-client")["spec"]["backendTLS"]["clientCertificateRef"]
    assert client["kind"] == "Secret" and client["name"]
