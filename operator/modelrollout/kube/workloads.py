"""Pure builders of the per-slot Deployment and Service, and the reading of slot readiness.

Each ModelRollout ``<name>`` owns two slots, ``a`` and ``b``: a Deployment and a Service each,
both named ``<name>-<slot>``. Which slot is stable is recorded in ``status.stableSlot``; roles
are never written into the pod template, so promotion (a role switch) restarts no pod.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from modelrollout.api.models import API_VERSION, GROUP, KIND, ModelRef, ModelRolloutSpec
from modelrollout.engine.types import Slot, SlotState

LABEL_ROLLOUT = f"{GROUP}/rollout"
LABEL_SLOT = f"{GROUP}/slot"
LABEL_VERSION = f"{GROUP}/version"
LABEL_SERVICE = f"{GROUP}/service"
ANNOTATION_VERSION = f"{GROUP}/model-version"
ANNOTATION_URI = f"{GROUP}/model-uri"
ANNOTATION_DIGEST = f"{GROUP}/model-digest"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelrollout-operator"}

_LABEL_VALUE_MAX = 63


Role = Literal["stable", "canary"]
ROLES: tuple[Role, Role] = ("stable", "canary")
"""The role Services: ``<name>-stable`` selects the stable slot's pods, ``<name>-canary`` the
candidate's while there is one (the stable's otherwise). Their names follow roles, not slots,
so what users write outside the managed rule keeps working across promotions and rollbacks."""

SLOTS: tuple[Slot, Slot] = ("a", "b")


def slot_name(rollout: str, slot: Slot) -> str:
    return f"{rollout}-{slot}"


def role_service_name(rollout: str, role: str) -> str:
    return f"{rollout}-{role}"


def role_of_service(rollout: str, service: str | None) -> Role | None:
    """The role a Service name stands for (``<name>-stable`` -> stable), None for any other."""
    return next((role for role in ROLES if service == role_service_name(rollout, role)), None)


def slot_of_service(rollout: str, service: str | None) -> Slot | None:
    """The slot a Service name is (``<name>-a`` -> a), None for any other name."""
    return next((slot for slot in SLOTS if service == slot_name(rollout, slot)), None)


def label_value(value: str) -> str:
    """A label-safe rendering of a version (labels allow [A-Za-z0-9._-], max 63, alnum at ends)."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in value)[
        :_LABEL_VALUE_MAX
    ]
    return cleaned.strip("._-") or "unknown"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_labels(rollout: str, slot: Slot) -> dict[str, str]:
    return {LABEL_ROLLOUT: rollout, LABEL_SLOT: slot}


def _model_env(model: ModelRef) -> list[dict[str, str]]:
    env = [
        {"name": "MODEL_NAME", "value": model.name},
        {"name": "MODEL_VERSION", "value": model.version},
        {"name": "MODEL_URI", "value": model.uri},
    ]
    if model.digest:
        env.append({"name": "MODEL_DIGEST", "value": model.digest})
    return env


def build_pod_template(
    template: dict[str, Any], rollout: str, slot: Slot, model: ModelRef, port: int
) -> dict[str, Any]:
    """The user's PodTemplateSpec with the model identity injected into every container."""
    pod = copy.deepcopy(template)
    meta = pod.setdefault("metadata", {})
    meta.pop("name", None)
    meta.pop("namespace", None)
    labels = meta.setdefault("labels", {})
    labels.update(selector_labels(rollout, slot))
    labels[LABEL_VERSION] = label_value(model.version)
    labels[LABEL_SERVICE] = slot_name(rollout, slot)
    annotations = meta.setdefault("annotations", {})
    annotations[ANNOTATION_VERSION] = model.version
    annotations[ANNOTATION_URI] = model.uri
    if model.digest:
        annotations[ANNOTATION_DIGEST] = model.digest
    spec = pod.setdefault("spec", {})
    injected = _model_env(model)
    injected_names = {e["name"] for e in injected}
    for container in spec.get("containers", []):
        kept = [e for e in container.get("env", []) if e.get("name") not in injected_names]
        container["env"] = kept + injected
        if not container.get("ports"):
            container["ports"] = [{"name": "http", "containerPort": port}]
    return pod


def build_deployment(
    owner: dict[str, Any], spec: ModelRolloutSpec, slot: Slot, model: ModelRef, replicas: int
) -> dict[str, Any]:
    rollout = owner["metadata"]["name"]
    port = spec.service.target_port or spec.service.port
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": slot_name(rollout, slot),
            "namespace": owner["metadata"]["namespace"],
            "labels": {**MANAGED_BY, **selector_labels(rollout, slot)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(rollout, slot)},
            "template": build_pod_template(spec.template, rollout, slot, model, port),
        },
    }


LABEL_ROLE = f"{GROUP}/role"


def build_service(owner: dict[str, Any], spec: ModelRolloutSpec, slot: Slot) -> dict[str, Any]:
    """The slot's own Service ``<name>-<slot>``: the managed route's backends."""
    rollout = owner["metadata"]["name"]
    labels = selector_labels(rollout, slot)
    return _service(owner, spec, slot_name(rollout, slot), labels, selector_labels(rollout, slot))


def build_role_service(
    owner: dict[str, Any], spec: ModelRolloutSpec, role: Role, slot: Slot
) -> dict[str, Any]:
    """The role Service ``<name>-<role>``, selecting the pods of the slot in that role now."""
    rollout = owner["metadata"]["name"]
    labels = {LABEL_ROLLOUT: rollout, LABEL_ROLE: role}
    name = role_service_name(rollout, role)
    return _service(owner, spec, name, labels, selector_labels(rollout, slot))


def _service(
    owner: dict[str, Any],
    spec: ModelRolloutSpec,
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": {**MANAGED_BY, **labels},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "selector": selector,
            "ports": [
                {
                    "name": "http",
                    "port": spec.service.port,
                    "targetPort": spec.service.target_port or spec.service.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def slot_state(deployment: dict[str, Any] | None) -> SlotState:
    """Readiness of a slot from its Deployment, as the real controllers report it."""
    if not deployment:
        return SlotState()
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    annotations = template_meta.get("annotations") or {}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    return SlotState(
        exists=True,
        version=annotations.get(ANNOTATION_VERSION),
        desired=desired,
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        total=int(status.get("replicas") or 0),
        observed_current=int(status.get("observedGeneration") or 0)
        >= int(meta.get("generation") or 0),
    )


def readiness_changed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    """Whether a Deployment's change alters what the engine sees of its slot: whether it exists,
    its version, desired and ready replicas, and whether it is rolled out. A new pod goes
    through several status updates (replicas, updatedReplicas, observedGeneration, ...) of
    which only these change a decision; waking the rollout for each of the others was a
    reconcile that decided nothing (docs/performance.md)."""

    def seen(deployment: dict[str, Any] | None) -> tuple[Any, ...]:
        state = slot_state(deployment)
        return (state.exists, state.version, state.desired, state.ready, state.is_ready)

    return seen(before) != seen(after)
