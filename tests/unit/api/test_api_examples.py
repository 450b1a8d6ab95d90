"""The examples are valid, self-contained and apply to any namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelrollout.api.validation import check, validate

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

ROUTE_KINDS = {
    "gatewayAPI": ("gateway.networking.k8s.io/v1", "HTTPRoute", "httpRoute"),
    "istio": ("networking.istio.io/v1beta1", "VirtualService", "virtualService"),
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_the_promised_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "minimal.yaml",
        "gateway-api.yaml",
        "istio.yaml",
        "replica-ratio.yaml",
        "custom-stages-comparison.yaml",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_and_self_contained(example: Path) -> None:
    docs = _docs(example)
    rollouts = [d for d in docs if d["kind"] == "ModelRollout"]
    assert rollouts, "an example shows at least one ModelRollout"
    for doc in docs:
        # kubectl apply -n <namespace> must work: no namespace baked in.
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    for rollout in rollouts:
        assert validate(rollout) == []
        spec = check(rollout)
        for container in spec.template["spec"]["containers"]:
            assert "env" not in container, "the operator injects the MODEL_* variables"
        router = spec.traffic_routing.kind
        if router in ROUTE_KINDS:
            api_version, kind, field = ROUTE_KINDS[router]
            name = rollout["spec"]["trafficRouting"][router][field]
            matches = [
                d for d in docs
                if (d["apiVersion"], d["kind"], d["metadata"]["name"]) == (api_version, kind, name)
            ]  # fmt: skip
            assert matches, f"{kind} {name} is not in {example.name}"


def test_minimal_example_relies_on_defaults() -> None:
    [rollout] = [d for d in _docs(EXAMPLES_DIR / "minimal.yaml") if d["kind"] == "ModelRollout"]
    assert set(rollout["spec"]) == {"model", "template", "trafficRouting"}
    spec = check(rollout)
    assert [s.name for s in spec.stages] == ["shadow", "canary-5", "canary-25", "full"]
    assert spec.traffic_routing.kind == "gatewayAPI"  # the default shadow stage needs a mesh


def test_replica_ratio_example_has_no_shadow_stage() -> None:
    [rollout] = [
        d for d in _docs(EXAMPLES_DIR / "replica-ratio.yaml") if d["kind"] == "ModelRollout"
    ]
    spec = check(rollout)
    assert spec.traffic_routing.kind == "replicas"
    assert all(stage.mirror == 0 for stage in spec.stages)


EVERY_EXAMPLE = sorted(EXAMPLES_DIR.rglob("*.yaml"))


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("example", EVERY_EXAMPLE, ids=lambda p: str(p.relative_to(EXAMPLES_DIR)))
def test_no_example_names_a_slot_service(example: Path) -> None:
    """Slots swap roles at every promotion: an entry naming <rollout>-a breaks at the first
    one. Examples name the role Services (<rollout>-stable, <rollout>-canary) instead."""
    docs = _docs(example)
    values = [s for doc in docs for s in _strings(doc)]
    for rollout in (d for d in docs if d.get("kind") == "ModelRollout"):
        name = rollout["metadata"]["name"]
        slots = {f"{name}-a", f"{name}-b"}
        named = [v for v in values if v in slots or v.split(".")[0] in slots]
        assert named == [], f"{example.name} names slot Services {named}"
