"""The life of one ModelRollout on the lab: first version, a full rollout, an abort.

Issue 5's acceptance: a first version reaches Succeeded; a second walks every stage and is
promoted without its pods being recreated (same pod UIDs before and after promotion); a third
is aborted and traffic returns to the second.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.scenarios.support import (
    Gateway,
    create_route,
    deployment_replicas,
    operator_metric,
    pod_uids,
    read_route,
    rollout_manifest,
    served,
    stages_entered,
)

pytestmark = pytest.mark.lab

NAME = "scorer"


def managed_rule(route: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = route["spec"]["rules"][0]
    return rule


def test_first_version_then_a_full_rollout_then_an_abort(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    create_route(kube_api, namespace, "gatewayAPI", NAME)
    user_rule = read_route(kube_api, namespace, "gatewayAPI", NAME)["spec"]["rules"][1]

    # 1. The first version has nothing to compare with: it is deployed and serves.
    rollouts.apply(rollout_manifest(NAME, "1.0.0"))
    status = rollouts.wait_phase(NAME, "Succeeded", timeout=90)
    assert status["stableVersion"] == "1.0.0"
    assert status["stableSlot"] == "a"
    assert [
        b["name"]
        for b in managed_rule(read_route(kube_api, namespace, "gatewayAPI", NAME))["backendRefs"]
    ] == [f"{NAME}-a"]

    # 2. A second version walks every stage, and its pods survive the promotion.
    gateway.start_load(namespace, "gatewayAPI", NAME, rps=30)
    rollouts.apply(rollout_manifest(NAME, "2.0.0"))
    rollouts.wait_stage(NAME, "canary-25", timeout=120)
    candidate_uids = pod_uids(kube_api, namespace, NAME, "b")
    assert candidate_uids, "the candidate slot runs pods during the canary stages"

    def promoted() -> dict[str, Any] | None:
        status = rollouts.status(NAME)
        return (
            status
            if status.get("phase") == "Succeeded" and status.get("stableVersion") == "2.0.0"
            else None
        )

    status = wait_for("2.0.0 to be promoted", promoted, timeout=120)
    assert status["stableVersion"] == "2.0.0" and status["stableSlot"] == "b"
    assert stages_entered(status)[-4:] == ["shadow", "canary-5", "canary-25", "full"]
    assert pod_uids(kube_api, namespace, NAME, "b") == candidate_uids, "promotion recreated pods"
    wait_for(
        "the old stable slot to scale to zero",
        lambda: deployment_replicas(kube_api, namespace, f"{NAME}-a") == 0,
    )
    rule = managed_rule(read_route(kube_api, namespace, "gatewayAPI", NAME))
    weights = {b["name"]: b.get("weight", 1) for b in rule["backendRefs"]}
    assert weights.get(f"{NAME}-b") == 100 and not weights.get(f"{NAME}-a")
    assert not [f for f in rule.get("filters", []) if f["type"] == "RequestMirror"]

    # 3. A third version is aborted from the shadow stage: traffic returns to the second.
    rollouts.apply(
        rollout_manifest(
            NAME,
            "3.0.0",
            stages=[
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "full", "weight": 100},
            ],
        )
    )
    rollouts.wait_stage(NAME, "shadow", timeout=90)
    wait_for(
        "the candidate to receive mirrored traffic",
        lambda: (
            gateway.stats(namespace, "gatewayAPI", NAME)["backends"].get(f"{NAME}-a") or {}
        ).get("mirrored"),
        timeout=60,
    )
    rollouts.annotate(
        NAME, {"modelrollout.dev/command": "abort:e2e-1", "modelrollout.dev/command-by": "e2e"}
    )
    status = rollouts.wait_phase(NAME, "RolledBack", timeout=60)
    assert "aborted by e2e" in (status.get("rollbackReason") or "")
    assert status["stableVersion"] == "2.0.0"
    wait_for(
        "the aborted candidate to scale to zero",
        lambda: deployment_replicas(kube_api, namespace, f"{NAME}-a") == 0,
    )
    gateway.reset_stats(namespace, "gatewayAPI", NAME)
    wait_for(
        "requests served after the abort",
        lambda: gateway.stats(namespace, "gatewayAPI", NAME)["total"] >= 60,
        timeout=30,
    )
    stats = gateway.stats(namespace, "gatewayAPI", NAME)
    assert served(stats, f"{NAME}-b") == stats["total"], stats
    assert (stats["backends"].get(f"{NAME}-a") or {}).get("mirrored", 0) == 0

    # The user's own rule was never touched, through a promotion and a rollback.
    assert read_route(kube_api, namespace, "gatewayAPI", NAME)["spec"]["rules"][1] == user_rule
    reasons = {e.reason for e in rollouts.events(NAME)}
    assert {"StageEntered", "Promoted", "Aborted"} <= reasons, reasons
    gateway.stop_load(namespace, "gatewayAPI", NAME)


def test_a_hand_edit_of_a_settled_rollouts_route_is_undone_at_once(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
) -> None:
    """A settled rollout is looked at only every 5 minutes when its watches are live: the
    route's watch must wake it when someone edits the route, or the edit would stand that
    long. The operator puts back what the status says serves, within seconds."""
    name = "edited"
    create_route(kube_api, namespace, "gatewayAPI", name)
    rollouts.apply(rollout_manifest(name, "1.0.0"))
    rollouts.wait_phase(name, "Succeeded", timeout=90)
    wake_ups = operator_metric(
        operator.metrics_url, "modelrollout_reconciles_total", trigger="route"
    )

    route = read_route(kube_api, namespace, "gatewayAPI", name)
    managed_rule(route)["backendRefs"] = [
        {"name": f"{name}-a", "port": 8080, "weight": 50},
        {"name": f"{name}-b", "port": 8080, "weight": 50},
    ]
    k8s.CustomObjectsApi(kube_api).replace_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", namespace, "httproutes", name, route
    )

    def restored() -> bool:
        refs = managed_rule(read_route(kube_api, namespace, "gatewayAPI", name))["backendRefs"]
        return [ref["name"] for ref in refs] == [f"{name}-a"]

    wait_for("the operator to undo the hand edit", restored, timeout=20)  # resync: 5 min
    woken = operator_metric(operator.metrics_url, "modelrollout_reconciles_total", trigger="route")
    assert (woken or 0) > (wake_ups or 0)
