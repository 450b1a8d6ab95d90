"""Issue 21's failures as a user meets them: a route re-applied as first written, replica-ratio
routing, a rule without backends at ruleIndex, and names outside the managed rule that must
survive promotions (the role Services).

Each test asserts what the user sees: the gateway's answers, the route's contents, status and
Events.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.scenarios.support import (
    GW,
    VS,
    Gateway,
    create_route,
    deployment_replicas,
    history_of,
    httproute,
    read_route,
    rollout_manifest,
    traffic_routing,
    virtualservice,
)

pytestmark = pytest.mark.lab

QUICK = [{"name": "canary-25", "weight": 25, "duration": "4s"}, {"name": "full", "weight": 100}]


def promoted_to(rollouts: Rollouts, name: str, version: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = rollouts.status(name)
        done = status.get("phase") == "Succeeded" and status.get("stableVersion") == version
        return status if done else None

    return wait_for(f"{version} to be promoted", probe, timeout=150)


def backend_names(route: dict[str, Any], index: int = 0) -> list[str]:
    return [ref["name"] for ref in route["spec"]["rules"][index].get("backendRefs") or []]


def send(gateway: Gateway, namespace: str, kind: str, name: str, path: str) -> httpx.Response:
    """One request through the route, as a client of the gateway would send it."""
    method = "GET" if path == "/healthz" else "POST"
    return httpx.post(
        f"{gateway.url}/route/{namespace}/{kind}/{name}",
        params={"path": path, "method": method},
        json={"features": [0.0] * 30} if method == "POST" else None,
        timeout=10,
    )


def test_a_route_reapplied_as_first_written_after_a_promotion_is_put_back_and_reported(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    reapplied_route_scenario(rollouts, kube_api, namespace, gateway)


def reapplied_route_scenario(
    rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str, gateway: Gateway
) -> None:
    """After 2.0.0 is promoted to slot b, `kubectl apply -f route.yaml` (rule 0 -> <name>-a,
    now at 0 replicas) must not be a silent outage: the operator sees the route points at the
    wrong Service, puts it back within seconds and says what it found."""
    name = "reapplied"
    create_route(kube_api, namespace, "gatewayAPI", name)
    rollouts.apply(rollout_manifest(name, "1.0.0"))
    rollouts.wait_phase(name, "Succeeded", timeout=90)
    rollouts.apply(rollout_manifest(name, "2.0.0", stages=QUICK))
    assert promoted_to(rollouts, name, "2.0.0")["stableSlot"] == "b"
    wait_for(
        "the old slot to scale to zero",
        lambda: deployment_replicas(kube_api, namespace, f"{name}-a") == 0,
    )

    # The manifest as first written, applied again (what kubectl apply or a GitOps sync does).
    custom = k8s.CustomObjectsApi(kube_api)
    current = read_route(kube_api, namespace, "gatewayAPI", name)
    reapplied = {**httproute(name), "metadata": current["metadata"]}
    written = custom.replace_namespaced_custom_object(*GW[:2], namespace, GW[2], name, reapplied)
    assert backend_names(written) == [f"{name}-a"]  # what the apply stored, for a moment

    wait_for(
        "the operator to point the route back at the stable slot b",
        lambda: backend_names(read_route(kube_api, namespace, "gatewayAPI", name)) == [f"{name}-b"],
        timeout=20,
    )

    # the route goes back first, the decision's record follows in the status write
    def recorded() -> dict[str, Any] | None:
        status = rollouts.status(name)
        return status if history_of(status, "RouteCorrected") else None

    status = wait_for("the correction in the audit trail", recorded, timeout=20)
    assert status["phase"] == "Succeeded"
    (entry,) = history_of(status, "RouteCorrected")
    assert f"{name}-a 100%" in entry["reason"] and "restored to slot b 100%" in entry["reason"]
    assert "RouteCorrected" in {e.reason for e in rollouts.events(name)}
    wait_for(
        "Ready again",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in rollouts.status(name).get("conditions") or []
        ),
        timeout=20,
    )

    # And users are answered by 2.0.0 again.
    answers = [send(gateway, namespace, "httproute", name, "/predict") for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert {r.headers["X-Lab-Backend"] for r in answers} == {f"{name}-b"}


def test_replica_ratio_routing_rolls_out_by_replica_counts_and_rolls_back(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    """`trafficRouting: replicas: {}`: the slots exist before any traffic step, the shared
    Service <name> selects both, the candidate's replica share is its weight, and the share
    its ready pods serve reaches status.weights.actualCandidate."""
    name = "ratio"
    stages = [
        {"name": "canary-25", "weight": 25, "duration": "8s"},
        {"name": "full", "weight": 100},
    ]
    rollouts.apply(rollout_manifest(name, "1.0.0", routing="replicas", replicas=4, stages=stages))
    status = rollouts.wait_phase(name, "Succeeded", timeout=90)
    assert (
        status["stableSlot"] == "a" and deployment_replicas(kube_api, namespace, f"{name}-a") == 4
    )
    core = k8s.CoreV1Api(kube_api)
    shared = core.read_namespaced_service(name, namespace)
    assert shared.spec.selector == {"modelrollout.dev/rollout": name}

    # Users reach the shared Service through their own route (the operator does not manage it).
    user_route = httproute(name)
    user_route["spec"]["rules"] = [{"backendRefs": [{"name": name, "port": 8080}]}]
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        *GW[:2], namespace, GW[2], user_route
    )

    gateway.start_load(namespace, "gatewayAPI", name, rps=20)
    rollouts.apply(rollout_manifest(name, "2.0.0", routing="replicas", replicas=4, stages=stages))
    rollouts.wait_stage(name, "canary-25", timeout=90)

    def at_25() -> dict[str, Any] | None:
        status = rollouts.status(name)
        weights = status.get("weights") or {}
        counts = (
            deployment_replicas(kube_api, namespace, f"{name}-a"),
            deployment_replicas(kube_api, namespace, f"{name}-b"),
        )
        return status if counts == (3, 1) and weights.get("actualCandidate") == 25.0 else None

    status = wait_for("3 stable + 1 candidate pod, 25% served by the candidate", at_25, timeout=60)
    assert status["weights"]["candidate"] == 25
    answers = [send(gateway, namespace, "httproute", name, "/predict") for _ in range(40)]
    assert {r.status_code for r in answers} == {200}
    assert f"{name}-b" in {r.headers["X-Lab-Pod"].rsplit("-", 2)[0] for r in answers}

    status = promoted_to(rollouts, name, "2.0.0")
    assert status["stableSlot"] == "b"
    wait_for(
        "all capacity on the new stable",
        lambda: (
            (
                deployment_replicas(kube_api, namespace, f"{name}-a"),
                deployment_replicas(kube_api, namespace, f"{name}-b"),
            )
            == (0, 4)
        ),
    )

    # A faulty version is rolled back: all replicas back on 2.0.0, the candidate at zero.
    rollouts.apply(
        rollout_manifest(
            name,
            "3.0.0",
            routing="replicas",
            replicas=4,
            stages=stages,
            env={"FAULT_ERROR_RATE": "1.0"},
            metrics=[{"name": "error-rate", "template": "error-rate", "max": 0.05}],
        )
    )
    status = rollouts.wait_phase(name, "RolledBack", timeout=120)
    assert status["stableVersion"] == "2.0.0"
    wait_for(
        "the candidate scaled down and the stable at 4",
        lambda: (
            (
                deployment_replicas(kube_api, namespace, f"{name}-a"),
                deployment_replicas(kube_api, namespace, f"{name}-b"),
            )
            == (0, 4)
        ),
    )
    gateway.stop_load(namespace, "gatewayAPI", name)


def test_replica_ratio_refuses_a_shared_service_it_did_not_create(
    rollouts: Rollouts, operator: OperatorProcess, kube_api: k8s.ApiClient, namespace: str
) -> None:
    name = "taken"
    k8s.CoreV1Api(kube_api).create_namespaced_service(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"selector": {"app": "legacy"}, "ports": [{"port": 80}]},
        },
    )
    rollouts.apply(rollout_manifest(name, "1.0.0", routing="replicas", stages=QUICK))

    def refused() -> dict[str, Any] | None:
        status = rollouts.status(name)
        return status if "not owned" in (status.get("message") or "") else None

    status = wait_for("the rollout to be held naming the Service", refused, timeout=60)
    assert f"Service {namespace}/{name} exists and is not owned" in status["message"]
    service = k8s.CoreV1Api(kube_api).read_namespaced_service(name, namespace)
    assert service.spec.selector == {"app": "legacy"}  # never rewritten
    assert not (service.metadata.annotations or {})


def test_a_redirect_rule_at_rule_index_is_refused_not_claimed(
    rollouts: Rollouts, operator: OperatorProcess, kube_api: k8s.ApiClient, namespace: str
) -> None:
    name = "redirect"
    route = httproute(name)
    route["spec"]["rules"].insert(
        0,
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}],
        },
    )
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(*GW[:2], namespace, GW[2], route)
    before = read_route(kube_api, namespace, "gatewayAPI", name)["spec"]
    rollouts.apply(rollout_manifest(name, "1.0.0"))

    def held() -> dict[str, Any] | None:
        status = rollouts.status(name)
        return status if "has no backendRefs" in (status.get("message") or "") else None

    status = wait_for("the rollout to say the rule has no backends", held, timeout=60)
    assert "RequestRedirect" in status["message"]
    assert read_route(kube_api, namespace, "gatewayAPI", name)["spec"] == before


def test_role_services_keep_what_users_wrote_outside_the_managed_rule_working(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    role_services_scenario(rollouts, kube_api, namespace, gateway)


def role_services_scenario(
    rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str, gateway: Gateway
) -> None:
    """The Istio example's /healthz entry names <name>-stable: it answers 200 after two
    promotions and a rollback (it named <name>-a before, and broke at the first promotion)."""
    name = "churn"
    body = virtualservice(name)
    health = {
        "name": "health",
        "match": [{"uri": {"exact": "/healthz"}}],
        "route": [{"destination": {"host": f"{name}-stable", "port": {"number": 8080}}}],
    }
    body["spec"]["http"].insert(0, health)
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(*VS[:2], namespace, VS[2], body)

    def healthz_ok() -> bool:
        answer = send(gateway, namespace, "virtualservice", name, "/healthz")
        return answer.status_code == 200

    def manifest(version: str, **extra: Any) -> dict[str, Any]:
        routing = {"trafficRouting": traffic_routing("istio", name)}
        return rollout_manifest(name, version, stages=QUICK, extra_spec=routing, **extra)

    def old_slot_empty(stable: str) -> bool:
        other = "b" if stable == "a" else "a"
        return deployment_replicas(kube_api, namespace, f"{name}-{other}") == 0

    rollouts.apply(manifest("1.0.0"))
    rollouts.wait_phase(name, "Succeeded", timeout=90)
    wait_for("/healthz through <name>-stable", healthz_ok, timeout=30)
    gateway.start_load(namespace, "istio", name, rps=20)
    for version, slot in (("2.0.0", "b"), ("3.0.0", "a")):
        rollouts.apply(manifest(version))
        assert promoted_to(rollouts, name, version)["stableSlot"] == slot
        wait_for(f"the old slot scaled down after {version}", lambda s=slot: old_slot_empty(s))
        assert healthz_ok(), f"/healthz broke after {version} was promoted to slot {slot}"
    rollouts.apply(
        manifest(
            "4.0.0",
            env={"FAULT_ERROR_RATE": "1.0"},
            metrics=[{"name": "error-rate", "template": "error-rate", "max": 0.05}],
        )
    )
    rollouts.wait_phase(name, "RolledBack", timeout=120)
    wait_for("the failed candidate scaled down", lambda: old_slot_empty("a"))
    assert healthz_ok(), "/healthz broke after the rollback"
    selector = k8s.CoreV1Api(kube_api).read_namespaced_service(f"{name}-canary", namespace)
    assert selector.spec.selector["modelrollout.dev/slot"] == "a"  # no candidate: the stable
    # The user's own entry was kept as written.
    stored = read_route(kube_api, namespace, "istio", name)["spec"]["http"][0]
    assert stored == copy.deepcopy(health)
    gateway.stop_load(namespace, "istio", name)


def test_a_split_that_never_reached_the_candidate_holds_the_rollout_until_it_does(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    """The route says 25%, but users come in through another route (to <name>-stable): the
    config was written, the traffic never arrived. The built-in traffic-split check sees it
    in the request counts, the rollout holds instead of promoting, and once users come
    through the managed route the observed split is shown and the rollout goes on."""
    name = "unseen"
    create_route(kube_api, namespace, "gatewayAPI", name)
    users = httproute(f"{name}-users")
    users["spec"]["rules"] = [{"backendRefs": [{"name": f"{name}-stable", "port": 8080}]}]
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(*GW[:2], namespace, GW[2], users)
    always = [{"name": "always", "query": "vector(0)", "max": 1}]  # passes without traffic

    def manifest(version: str) -> dict[str, Any]:
        return rollout_manifest(
            name,
            version,
            stages=[
                {"name": "canary-25", "weight": 25, "duration": "4s"},
                {"name": "full", "weight": 100},
            ],
            metrics=always,
            inconclusive_limit=2,
            extra_spec={},
        )

    rollouts.apply(manifest("1.0.0"))
    rollouts.wait_phase(name, "Succeeded", timeout=90)
    gateway.start_load(namespace, "gatewayAPI", f"{name}-users", rps=40)
    body = manifest("2.0.0")
    body["spec"]["analysis"]["trafficCheck"] = {"minRequests": 50}
    rollouts.apply(body)

    def split_result(status: dict[str, Any]) -> dict[str, Any]:
        results = (status.get("analysis") or {}).get("results") or []
        return next((r for r in results if r["name"] == "traffic-split"), {})

    def stalled() -> dict[str, Any] | None:
        status = rollouts.status(name)
        held = any(
            c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions") or []
        )
        return status if held and split_result(status).get("verdict") == "Inconclusive" else None

    status = wait_for("the rollout to hold on the unseen split", stalled, timeout=90)
    assert "traffic split not observed: expected 25%, saw 0%" in split_result(status)["message"]
    assert status["stableVersion"] == "1.0.0" and status["stage"]["name"] == "canary-25"

    # Users now come through the managed route: the split is seen and the rollout promotes.
    gateway.stop_load(namespace, "gatewayAPI", f"{name}-users")
    gateway.start_load(namespace, "gatewayAPI", name, rps=40)

    status = promoted_to(rollouts, name, "2.0.0")
    # The run that ended canary-25 saw the split, recorded with the step it decided.
    (entered,) = [e for e in history_of(status, "StageEntered") if e.get("to") == "full"]
    (seen,) = [m for m in entered["metrics"] if m["name"] == "traffic-split"]
    assert seen["verdict"] == "Successful" and 0.1 < seen["value"] < 0.4, seen
    assert "observed" in seen["message"] and "expected 25%" in seen["message"]
    gateway.stop_load(namespace, "gatewayAPI", name)
