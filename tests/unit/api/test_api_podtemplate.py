"""spec.template's schema: generated from Kubernetes' PodTemplateSpec, structural, small enough
for `kubectl apply`, and bounding how deep a stored object can nest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelrollout.api import crd, podtemplate, podtemplate_gen

ANNOTATION_CAP = 256 * 1024
"""The apiserver's limit on all annotations of an object together: `kubectl apply` (client
side) copies the whole CRD into kubectl.kubernetes.io/last-applied-configuration."""


def _source() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(podtemplate_gen.SOURCE_FILE.read_text())
    return loaded


def test_the_committed_schema_is_the_generators_output_of_the_committed_source() -> None:
    generated = podtemplate_gen.generate(_source()["definitions"])
    committed = json.loads(podtemplate_gen.SCHEMA_FILE.read_text())
    assert generated == committed, "run python -m modelrollout.api.podtemplate_gen SWAGGER"
    assert podtemplate_gen.SCHEMA_FILE.read_text() == podtemplate_gen.dump(generated)


def test_the_source_is_pod_template_spec_and_everything_it_refers_to() -> None:
    source = _source()
    assert source["origin"]["root"] == "io.k8s.api.core.v1.PodTemplateSpec"
    assert len(source["origin"]["sha256"]) == 64
    definitions = source["definitions"]
    assert podtemplate_gen.closure(definitions) == definitions
    assert "io.k8s.api.core.v1.Container" in definitions


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for step in path.split("."):
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


def test_int_or_string_fields_take_both() -> None:
    schema = podtemplate.template_schema()
    int_or_string = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
    }
    probe = "spec.containers.[].livenessProbe.httpGet.port"
    assert _at(schema, probe) == int_or_string
    limits = _at(schema, "spec.containers.[].resources.limits")
    assert limits["additionalProperties"] == int_or_string  # cpu: 1 and cpu: 500m
    assert _at(schema, "spec.containers.[].ports.[].containerPort") == {
        "type": "integer", "format": "int32",
    }  # fmt: skip


def test_what_crds_cannot_express_is_left_out() -> None:
    schema = podtemplate.template_schema()
    assert "managedFields" not in _at(schema, "metadata")["properties"]
    text = json.dumps(schema)
    assert "x-kubernetes-patch" not in text and "x-kubernetes-unions" not in text
    below = {k: v for k, v in schema.items() if k != "description"}
    assert '"description"' not in json.dumps(below)  # too big for kubectl apply with them
    # A list-map needs its keys required: Container.ports' protocol is not, so a plain list.
    ports = _at(schema, "spec.containers.[].ports")
    assert "x-kubernetes-list-type" not in ports
    spread = _at(schema, "spec.topologySpreadConstraints")
    assert spread["x-kubernetes-list-type"] == "map"
    assert set(spread["x-kubernetes-list-map-keys"]) <= set(spread["items"]["required"])


def test_a_recursive_or_missing_definition_is_refused() -> None:
    loop = {
        "io.k8s.api.core.v1.PodTemplateSpec": {
            "type": "object",
            "properties": {"next": {"$ref": "#/definitions/io.k8s.api.core.v1.PodTemplateSpec"}},
        }
    }
    with pytest.raises(podtemplate_gen.GenerationError, match="recursive"):
        podtemplate_gen.generate(loop)
    dangling = {
        "io.k8s.api.core.v1.PodTemplateSpec": {
            "type": "object",
            "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec"}},
        }
    }
    with pytest.raises(podtemplate_gen.GenerationError, match="missing"):
        podtemplate_gen.closure(dangling)


@pytest.mark.parametrize("cel", [True, False])
def test_the_crd_fits_kubectl_applys_last_applied_annotation(cel: bool) -> None:
    applied = json.dumps(crd.build_crd(cel=cel), separators=(",", ":"))
    assert len(applied.encode()) < ANNOTATION_CAP / 2, len(applied)


def _instance_depth(node: dict[str, Any]) -> int:
    """How deep a value valid under ``node`` nests (an object or list is one level)."""
    below = list(node.get("properties", {}).values())
    below += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    own = 1 if node.get("type") in ("object", "array") else 0
    return own + max((_instance_depth(b) for b in below), default=0)


def test_nothing_in_a_stored_spec_nests_deeper_than_the_schema() -> None:
    """With unknown fields pruned, the schema's depth is the deepest spec the apiserver stores;
    the spec depth limit of validation sits above it, so it never refuses a real spec."""
    from modelrollout.api.validation import MAX_SPEC_DEPTH

    depth = _instance_depth(crd.spec_schema())
    assert 10 < depth < MAX_SPEC_DEPTH, depth
