"""The shipped examples agree: the Kubernetes policy is the example policy, every shipped Envoy configuration
normalises paths and refuses underscore header names, and no shipped policy draws a check-config warning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server._lint import lint_rules
from authz_server.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
GERRIT = {"url": "http://gerrit", "username": "u", "password_env": "P"}


def k8s_documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text()) if d]


def k8s_config() -> dict[str, Any]:
    (cm,) = [d for d in k8s_documents("gerrit-authz.yaml") if d["kind"] == "ConfigMap"]
    data: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return data


def example_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    return data


def envoy_configs() -> dict[str, dict[str, Any]]:
    (cm,) = [d for d in k8s_documents("envoy.yaml") if d["kind"] == "ConfigMap"]
    return {
        "examples/envoy/envoy.yaml": yaml.safe_load((ROOT / "examples" / "envoy" / "envoy.yaml").read_text()),
        "deploy/kubernetes/envoy.yaml": yaml.safe_load(cm["data"]["envoy.yaml"]),
    }


def readme_rules() -> list[dict[str, Any]]:
    """The rules of the README's configuration walkthrough (the first ```yaml block holding `rules:`)."""
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "rules" in data and "gerrit" in data:
            rules: list[dict[str, Any]] = data["rules"]
            return rules
    raise AssertionError("no configuration walkthrough in README.md")


def test_the_kubernetes_policy_is_the_example_policy() -> None:
    assert k8s_config()["rules"] == example_config()["rules"]


@pytest.mark.parametrize(
    "rules",
    [example_config()["rules"], k8s_config()["rules"], readme_rules()],
    ids=["examples/config.yaml", "deploy/kubernetes", "README"],
)
def test_no_shipped_policy_draws_a_warning(rules: list[dict[str, Any]]) -> None:
    assert lint_rules(parse_config({"gerrit": GERRIT, "rules": rules}).rules) == []


@pytest.mark.parametrize("name", sorted(envoy_configs()))
def test_every_shipped_envoy_normalises_and_refuses_underscores(name: str) -> None:
    bootstrap = envoy_configs()[name]
    listener = next(x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "ingress")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] in ("UNESCAPE_AND_REDIRECT", "REJECT_REQUEST")
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
