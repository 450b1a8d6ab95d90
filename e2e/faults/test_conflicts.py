"""409 conflicts: other writers edit the same objects as the operator, in tight loops.

While a rollout runs, one writer keeps editing the rollout's HTTPRoute (it renames the user's
hostname on every write and now and then appends a rule of its own) and another keeps editing
the ModelRollout's labels and annotations; both read-modify-write with the resourceVersion
(a PUT), so every race with the operator is a real 409 on one side or the other. The rollout
must complete, every edit the writers got accepted must survive (no lost update) and the
operator's status must end up saying Succeeded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.faults.support import ChartIdentity, attempts, chain_problems, history, record
from e2e.harness import GROUP, PLURAL, VERSION, OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import GW, create_route, read_route, rollout_manifest

pytestmark = pytest.mark.lab

NAME = "contended"
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "3s"},
    {"name": "canary-10", "weight": 10, "duration": "3s"},
    {"name": "canary-50", "weight": 50, "duration": "3s"},
    {"name": "full", "weight": 100},
]
MAX_USER_RULES = 6


@dataclass
class Writer:
    """A read-modify-write loop; ``last`` is what its last accepted write set."""

    writes: int = 0
    conflicts: int = 0
    last: Any = None
    added_paths: list[str] = field(default_factory=list)
    error: BaseException | None = None


def route_writer(lab: Lab, namespace: str, stop: threading.Event, out: Writer) -> None:
    with lab.api_client() as api:
        custom = k8s.CustomObjectsApi(api)
        i = 0
        while not stop.is_set():
            i += 1
            route = custom.get_namespaced_custom_object(*GW[:2], namespace, GW[2], NAME)
            hostname = f"v{i}.{NAME}.example.com"
            route["spec"]["hostnames"] = [hostname]
            new_path = None
            if i % 7 == 0 and len(out.added_paths) < MAX_USER_RULES:
                new_path = f"/user-{i}"
                route["spec"]["rules"].append(
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": new_path}}],
                        "backendRefs": [{"name": "legacy-scorer", "port": 80}],
                    }
                )
            try:
                custom.replace_namespaced_custom_object(*GW[:2], namespace, GW[2], NAME, route)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                out.conflicts += 1
                continue
            out.writes += 1
            out.last = hostname
            if new_path:
                out.added_paths.append(new_path)


def rollout_writer(lab: Lab, namespace: str, stop: threading.Event, out: Writer) -> None:
    with lab.api_client() as api:
        custom = k8s.CustomObjectsApi(api)
        i = 0
        while not stop.is_set():
            i += 1
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
            meta = obj["metadata"]
            meta.setdefault("labels", {})["edited-by"] = f"writer-{i}"
            meta.setdefault("annotations", {})["example.com/note"] = f"note {i}"
            try:
                custom.replace_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, NAME, obj
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                out.conflicts += 1
                continue
            out.writes += 1
            out.last = i


def run(target: Any, out: Writer, *args: Any) -> threading.Thread:
    def body() -> None:
        try:
            target(*args, out)
        except BaseException as exc:  # reported by the test, not lost in a thread
            out.error = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_rollout_completes_and_no_edit_is_lost_under_conflicts(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    chart_identity: ChartIdentity,
) -> None:
    create_route(kube_api, namespace, "gatewayAPI", NAME)
    user_rule = read_route(kube_api, namespace, "gatewayAPI", NAME)["spec"]["rules"][1]
    op = OperatorProcess(crd, [namespace], kubeconfig=chart_identity.kubeconfig).start()
    stop = threading.Event()
    on_route, on_rollout = Writer(), Writer()
    threads: list[threading.Thread] = []
    try:
        rollouts.apply(rollout_manifest(NAME, "1.0.0", stages=STAGES))
        rollouts.wait_phase(NAME, "Succeeded", timeout=90)
        threads = [
            run(route_writer, on_route, crd, namespace, stop),
            run(rollout_writer, on_rollout, crd, namespace, stop),
        ]
        rollouts.patch_spec(NAME, {"model": {"version": "2.0.0", "uri": "s3://models/bc/2.0.0"}})

        def promoted() -> dict[str, Any] | None:
            status = rollouts.status(NAME)
            ok = status.get("phase") == "Succeeded" and status.get("stableVersion") == "2.0.0"
            return status if ok else None

        status = wait_for("2.0.0 to be promoted despite the writers", promoted, timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        op.stop()
    assert on_route.error is None and on_rollout.error is None, (on_route.error, on_rollout.error)

    # The operator's decisions: every stage once, in order, one promotion, an intact chain.
    [attempt] = attempts(history(status))
    assert attempt.stages_entered == [s["name"] for s in STAGES]
    assert attempt.outcomes == ["Promoted"]
    assert not chain_problems(status)

    # The writers' accepted edits all survived.
    route = read_route(kube_api, namespace, "gatewayAPI", NAME)
    assert route["spec"]["hostnames"] == [on_route.last]
    paths = [r["matches"][0]["path"]["value"] for r in route["spec"]["rules"][2:]]
    assert paths == on_route.added_paths
    assert route["spec"]["rules"][1] == user_rule
    managed = {b["name"]: b.get("weight", 1) for b in route["spec"]["rules"][0]["backendRefs"]}
    assert managed.get(f"{NAME}-b") == 100 and not managed.get(f"{NAME}-a"), managed
    meta = rollouts.get(NAME)["metadata"]
    assert meta["labels"]["edited-by"] == f"writer-{on_rollout.last}"
    assert meta["annotations"]["example.com/note"] == f"note {on_rollout.last}"

    assert on_route.writes > 20 and on_rollout.writes > 20
    assert on_route.conflicts + on_rollout.conflicts >= 1, "no write ever raced the operator"
    record(
        crd,
        "write-conflicts",
        {
            "route_writes": on_route.writes,
            "route_conflicts": on_route.conflicts,
            "user_rules_added": len(on_route.added_paths),
            "rollout_metadata_writes": on_rollout.writes,
            "rollout_metadata_conflicts": on_rollout.conflicts,
            "lost_updates": 0,
            "rollout": "Succeeded",
        },
    )
