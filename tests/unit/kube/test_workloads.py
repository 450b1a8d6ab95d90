"""The per-slot Deployment and Service builders and the readiness reading."""

from __future__ import annotations

from typing import Any

from modelrollout.api.models import ModelRef, ModelRolloutSpec
from modelrollout.kube.workloads import (
    ANNOTATION_VERSION,
    LABEL_SLOT,
    LABEL_VERSION,
    build_deployment,
    build_service,
    label_value,
    slot_state,
)

OWNER = {"metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1"}}
MODEL = ModelRef(
    name="fraud", version="2.4.0+cpu", uri="s3://m/2.4.0", digest="sha256:" + "ab" * 32
)


def spec(**extra: Any) -> ModelRolloutSpec:
    raw: dict[str, Any] = {
        "model": {"name": "fraud", "version": "2.4.0", "uri": "s3://m/2.4.0"},
        "template": {
            "metadata": {"labels": {"team": "risk"}},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "img:1",
                        "env": [
                            {"name": "MODEL_URI", "value": "stale"},
                            {"name": "KEEP", "value": "1"},
                        ],
                    },
                    {"name": "sidecar", "image": "side:1", "ports": [{"containerPort": 9000}]},
                ]
            },
        },
        "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
    }
    raw.update(extra)
    return ModelRolloutSpec.model_validate(raw)


def test_deployment_injects_model_identity_into_every_container_and_keeps_user_env() -> None:
    dep = build_deployment(OWNER, spec(), "b", MODEL, 3)
    containers = dep["spec"]["template"]["spec"]["containers"]
    for container in containers:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MODEL_NAME"] == "fraud"
        assert env["MODEL_VERSION"] == "2.4.0+cpu"
        assert (
            env["MODEL_URI"] == "s3://m/2.4.0"
        )  # the stale user value is replaced, not duplicated
        assert env["MODEL_DIGEST"] == MODEL.digest
    names = [e["name"] for e in containers[0]["env"]]
    assert names.count("MODEL_URI") == 1 and "KEEP" in names
    assert containers[1]["ports"] == [{"containerPort": 9000}]  # user ports untouched
    assert containers[0]["ports"] == [{"name": "http", "containerPort": 8080}]


def test_deployment_identity_labels_selector_and_owner() -> None:
    dep = build_deployment(OWNER, spec(), "a", MODEL, 2)
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "risk"
    assert meta["labels"][LABEL_SLOT] == "a"
    assert meta["labels"][LABEL_VERSION] == "2.4.0_cpu"  # '+' is not allowed in label values
    assert meta["annotations"][ANNOTATION_VERSION] == "2.4.0+cpu"  # the exact version lives here
    assert dep["metadata"]["name"] == "fraud-a"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {
        "modelrollout.dev/rollout": "fraud",
        "modelrollout.dev/slot": "a",
    }
    (owner,) = dep["metadata"]["ownerReferences"]
    assert owner["uid"] == "u-1" and owner["controller"] is True


def test_pod_template_carries_no_role_so_promotion_restarts_nothing() -> None:
    """The template depends on slot and model only: a role switch changes nothing."""
    first = build_deployment(OWNER, spec(), "b", MODEL, 1)["spec"]["template"]
    again = build_deployment(OWNER, spec(replicas=5), "b", MODEL, 1)["spec"]["template"]
    assert first == again
    assert "stable" not in str(first) and "candidate" not in str(first)


def test_service_targets_one_slot() -> None:
    svc = build_service(OWNER, spec(service={"port": 80, "targetPort": 8080}), "b")
    assert svc["metadata"]["name"] == "fraud-b"
    assert svc["spec"]["selector"] == {
        "modelrollout.dev/rollout": "fraud",
        "modelrollout.dev/slot": "b",
    }
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["ports"][0]["targetPort"] == 8080


def test_label_value_is_always_a_valid_label() -> None:
    assert label_value("1.0") == "1.0"
    assert label_value("x" * 100) == "x" * 63
    assert label_value("+++") == "unknown"
    assert label_value("v1/ü") == "v1"  # no trailing separator


def _deployment(
    replicas: int,
    ready: int,
    updated: int,
    generation: int,
    observed: int,
    total: int | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {ANNOTATION_VERSION: "2"}}},
        },
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": observed,
            "replicas": updated if total is None else total,
        },
    }


def test_slot_state_ready_only_when_controller_caught_up_and_all_replicas_ready() -> None:
    assert slot_state(None).is_ready is False
    assert slot_state(_deployment(2, 2, 2, 3, 3)).is_ready is True
    assert slot_state(_deployment(2, 2, 2, 3, 3)).version == "2"
    assert slot_state(_deployment(2, 1, 2, 3, 3)).is_ready is False  # one replica not ready
    assert slot_state(_deployment(2, 2, 1, 3, 3)).is_ready is False  # rolling update in flight
    assert (
        slot_state(_deployment(2, 2, 2, 4, 3)).is_ready is False
    )  # controller has not seen the edit
    assert slot_state(_deployment(0, 0, 0, 3, 3)).is_ready is False  # scaled to zero serves nothing


def test_an_old_ready_pod_does_not_make_an_updated_slot_ready() -> None:
    """Mid-update (1 replica, maxSurge 1): the new pod loads, the old one still counts in
    readyReplicas. Only once the old pod is gone is the slot ready with the new version."""
    assert slot_state(_deployment(1, 1, 1, 4, 4, total=2)).is_ready is False
    assert slot_state(_deployment(1, 1, 1, 4, 4, total=1)).is_ready is True
