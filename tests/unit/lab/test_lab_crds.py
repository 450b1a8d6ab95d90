"""The test-only route CRDs of the lab: structural, no CEL, and carrying the fields the operator
and the gateway use. (That a 1.20 apiserver accepts them is shown by every lab run: the lab
applies them at start-up.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

CRDS = Path(__file__).resolve().parents[3] / "e2e" / "lab" / "crds"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / name).read_text())
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    return dict(doc)


def schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}
    return dict(v["schema"]["openAPIV3Schema"])


def at(node: dict[str, Any], path: str) -> dict[str, Any]:
    """Follow ``a.b[].c`` through properties and array items."""
    for part in path.split("."):
        many = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if many:
            assert node["type"] == "array", part
            node = node["items"]
    return node


def walk(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        if "type" in node or "properties" in node:
            out.append((where, node))
        for key, value in node.items():
            out += walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += walk(value, f"{where}[{i}]")
    return out


@pytest.mark.parametrize(
    ("file", "version"),
    [
        ("gateway.networking.k8s.io_httproutes.yaml", "v1"),
        ("networking.istio.io_virtualservices.yaml", "v1beta1"),
    ],
)
def test_structural_without_cel(file: str, version: str) -> None:
    root = schema(load(file), version)
    text = (CRDS / file).read_text()
    assert "x-kubernetes-validations" not in text
    for where, node in walk(root):
        if ".oneOf" in where or ".anyOf" in where or ".not" in where:
            continue  # junctors may only hold value validations
        assert "type" in node, f"{where} has no type"
        if node["type"] == "object" and "properties" not in node:
            open_ended = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
                "additionalProperties"
            )
            assert open_ended or where.endswith("metadata"), f"{where} is an untyped object"


def test_httproute_fields() -> None:
    crd = load("gateway.networking.k8s.io_httproutes.yaml")
    assert crd["metadata"]["annotations"]["api-approved.kubernetes.io"]
    root = schema(crd, "v1")
    rule = "spec.rules[]"
    for path in [
        "spec.parentRefs[].name",
        "spec.hostnames[]",
        f"{rule}.matches[].path.type",
        f"{rule}.matches[].headers[].value",
        f"{rule}.filters[].requestHeaderModifier.set[].name",
        f"{rule}.filters[].requestMirror.backendRef.namespace",
        f"{rule}.filters[].requestMirror.fraction.denominator",
        f"{rule}.backendRefs[].kind",
        f"{rule}.backendRefs[].filters[].type",
        f"{rule}.timeouts.request",
        "status.parents[].conditions[].reason",
    ]:
        at(root, path)
    weight = at(root, f"{rule}.backendRefs[].weight")
    assert (weight["default"], weight["minimum"]) == (1, 0)
    percent = at(root, f"{rule}.filters[].requestMirror.percent")
    assert (percent["minimum"], percent["maximum"]) == (0, 100)
    assert at(root, f"{rule}.backendRefs[].group")["default"] == ""
    assert "RequestMirror" in at(root, f"{rule}.filters[].type")["enum"]


def test_virtualservice_fields() -> None:
    root = schema(load("networking.istio.io_virtualservices.yaml"), "v1beta1")
    http = "spec.http[]"
    for path in [
        "spec.hosts[]",
        "spec.gateways[]",
        f"{http}.name",
        f"{http}.match[].uri.prefix",
        f"{http}.route[].destination.subset",
        f"{http}.route[].headers.request.set",
        f"{http}.mirror.host",
        f"{http}.mirrors[].percentage.value",
        f"{http}.retries.perTryTimeout",
        f"{http}.timeout",
        f"{http}.headers.response.remove[]",
    ]:
        at(root, path)
    assert at(root, f"{http}.route[].destination.port.number")["type"] == "integer"
    assert at(root, f"{http}.route[].weight")["type"] == "integer"
    assert at(root, f"{http}.mirrorPercentage.value")["type"] == "number"
    assert at(root, "status")["x-kubernetes-preserve-unknown-fields"] is True
