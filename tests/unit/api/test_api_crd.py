"""The generated CRD: committed file in sync, identity, structural schema, defaults, CEL."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cel import as_admitted, compile_all, failed_rules

from modelrollout.api import crd
from modelrollout.api.models import AnalysisSpec, default_stages
from modelrollout.api.validation import parse_spec

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "crds" / "modelrollout.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXPECTED_INVALID = yaml.safe_load((REPO / "tests" / "invalid" / "expected.yaml").read_text())

# Keys a structural schema (or kubectl 1.20's validation of the CRD) does not allow; anyOf and
# additionalProperties only in the forms checked in test_schema_is_structural.
FORBIDDEN_KEYS = {"$ref", "$defs", "oneOf", "allOf", "not", "title", "nullable", "const",
                  "x-duration", "x-kubernetes-preserve-unknown-fields"}  # fmt: skip
INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}],
                 "x-kubernetes-int-or-string": True}  # fmt: skip


def _version(crd_obj: dict[str, Any]) -> dict[str, Any]:
    [version] = crd_obj["spec"]["versions"]
    return version


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += _nodes(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        out += _nodes(schema["items"], path + "[]")
    if "additionalProperties" in schema:
        out += _nodes(schema["additionalProperties"], path + "{}")
    return out


def _rollouts(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ModelRollout"]


def test_committed_crd_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == crd.render(), (
        "crds/modelrollout.yaml is stale: run "
        "`python -m modelrollout.api.crd -o crds/modelrollout.yaml`"
    )


@pytest.mark.parametrize("flags", [[], ["--no-cel"]])
def test_module_prints_the_crd(flags: list[str], tmp_path: Path) -> None:
    expected = crd.render(cel=not flags)
    printed = subprocess.run(
        [sys.executable, "-m", "modelrollout.api.crd", *flags],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert printed == expected
    out = tmp_path / "crd.yaml"
    assert crd.main([*flags, "-o", str(out)]) == 0
    assert out.read_text() == expected


def test_identity_of_the_resource() -> None:
    obj = crd.build_crd()
    assert obj["apiVersion"] == "apiextensions.k8s.io/v1"
    assert obj["metadata"]["name"] == "modelrollouts.modelrollout.dev"
    spec = obj["spec"]
    assert spec["group"] == "modelrollout.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelRollout"
    assert spec["names"]["shortNames"] == ["mro"]
    # No categories: a ModelRollout must not show up in `kubectl get all`.
    assert "categories" not in spec["names"]
    version = _version(obj)
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_point_at_status_fields() -> None:
    version = _version(crd.build_crd())
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Stage", "Weight", "Stable", "Candidate", "Message", "Age"]
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Stage"]["jsonPath"] == ".status.stage.name"
    assert columns["Weight"]["jsonPath"] == ".status.weights.candidate"
    assert columns["Stable"]["jsonPath"] == ".status.stableVersion"
    assert columns["Candidate"]["jsonPath"] == ".status.candidateVersion"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    assert columns["Message"]["priority"] == 1  # only with -o wide
    root = version["schema"]["openAPIV3Schema"]
    type_of = {"string": "string", "integer": "integer"}
    for column in columns.values():
        if column["name"] == "Age":
            continue
        node = root
        for step in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][step]
        assert type_of[node["type"]] == column["type"], column


@pytest.mark.parametrize("cel", [True, False])
def test_schema_is_structural(cel: bool) -> None:
    """Every node has a type (or is int-or-string), maps have a value schema and no properties,
    and nothing preserves unknown fields: the apiserver prunes them everywhere, the pod template
    included, so no object can nest deeper than the schema."""
    root = crd.openapi_schema(cel=cel)
    for path, node in _nodes(root):
        assert not FORBIDDEN_KEYS & node.keys(), f"{path}: {FORBIDDEN_KEYS & node.keys()}"
        if node.get("x-kubernetes-int-or-string"):
            assert node == INT_OR_STRING, path
            continue
        assert "anyOf" not in node, path
        assert "type" in node, f"{path} has no type"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path
            assert node["type"] == "object" and "properties" not in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True, f"{path}.{key} must be the OpenAPI v3.0 boolean form"


def test_every_property_is_described() -> None:
    root = crd.openapi_schema()
    undescribed = [p for p, n in crd.iter_properties(root) if not n.get("description", "").strip()]
    # metadata is the standard ObjectMeta: the apiserver refuses a description there. The pod
    # template's fields are Kubernetes' own, documented by `kubectl explain deployment.spec.
    # template`; their descriptions would make the CRD too big for `kubectl apply`.
    assert [p for p in undescribed if not p.startswith("spec.template.")] == ["metadata"]
    assert root["properties"]["spec"]["description"]
    assert root["properties"]["status"]["description"]


def test_spec_is_bounded_for_cel_cost_estimation() -> None:
    """Apiservers refuse CEL rules whose worst-case cost is unbounded: every list in the spec
    needs maxItems and every string maxLength (or an enum)."""
    for path, node in _nodes(crd.spec_schema(), "spec"):
        if path.startswith("spec.template"):
            continue  # no rule reads the pod template: its cost is never estimated
        if node["type"] == "array":
            assert "maxItems" in node, path
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, path


def test_named_lists_are_maps_keyed_by_name() -> None:
    spec = crd.spec_schema()
    for node in (
        spec["properties"]["stages"],
        spec["properties"]["analysis"]["properties"]["metrics"],
        spec["properties"]["webhooks"],
    ):
        assert node["x-kubernetes-list-type"] == "map"
        assert node["x-kubernetes-list-map-keys"] == ["name"]
        assert "name" in node["items"]["required"]
    metric_stages = spec["properties"]["analysis"]["properties"]["metrics"]["items"]
    assert metric_stages["properties"]["stages"]["x-kubernetes-list-type"] == "set"


def test_template_is_kubernetes_pod_template_spec() -> None:
    template = crd.spec_schema()["properties"]["template"]
    assert template["type"] == "object"
    assert set(template["properties"]) == {"metadata", "spec"}
    pod = template["properties"]["spec"]
    assert pod["required"] == ["containers"]
    container = pod["properties"]["containers"]["items"]
    assert container["required"] == ["name"]
    assert container["properties"]["resources"]["properties"]["limits"] == {
        "type": "object", "additionalProperties": INT_OR_STRING,
    }  # fmt: skip


def test_schema_defaults_are_the_model_defaults() -> None:
    spec = crd.spec_schema()["properties"]
    assert spec["stages"]["default"] == [
        s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in default_stages()
    ]
    assert AnalysisSpec.model_validate(spec["analysis"]["default"]) == AnalysisSpec()
    assert spec["replicas"]["default"] == 1
    assert spec["analysis"]["properties"]["onInconclusive"]["default"] == "Hold"
    # Status is written by the operator only: the apiserver must not invent values there.
    assert not [p for p, n in _nodes(crd.status_schema()) if "default" in n]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_apiserver_defaulting_matches_pydantic(example: Path) -> None:
    """What the apiserver stores after defaulting is exactly what the models fill in."""
    schema = crd.spec_schema()
    for rollout in _rollouts(example):
        admitted = as_admitted(rollout["spec"], schema)
        parsed = parse_spec(rollout["spec"])
        assert admitted == parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert parse_spec(admitted) == parsed


def test_no_cel_variant_differs_only_by_the_cel_rules() -> None:
    with_cel = crd.build_crd(cel=True)
    without = crd.build_crd(cel=False)
    assert "x-kubernetes-validations" not in crd.render(cel=False)
    stripped = copy.deepcopy(with_cel)
    for _, node in _nodes(_version(stripped)["schema"]["openAPIV3Schema"]):
        node.pop("x-kubernetes-validations", None)
    assert stripped == without


def test_cel_rules_compile_and_sit_where_declared() -> None:
    root = crd.openapi_schema(cel=True)
    assert compile_all(root) == sum(len(rules) for rules in crd.CEL_RULES.values())
    for location, rules in crd.CEL_RULES.items():
        assert crd.locate(root, location)["x-kubernetes-validations"] == rules


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_cel_rules_accept_the_examples(example: Path) -> None:
    root = crd.openapi_schema(cel=True)
    for rollout in _rollouts(example):
        assert failed_rules(as_admitted(rollout, root), root) == []


def test_every_cel_rule_rejects_some_invalid_manifest() -> None:
    exercised = {message for case in EXPECTED_INVALID.values() for message in case.get("cel", [])}
    declared = {rule["message"] for rules in crd.CEL_RULES.values() for rule in rules}
    assert declared - exercised == set()
