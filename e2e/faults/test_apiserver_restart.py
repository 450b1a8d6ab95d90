"""The apiserver restarts (etcd kept) twice in the middle of a rollout.

The operator's watches and calls fail while it is down; it must reconnect by itself and carry
the rollout on to Succeeded, every stage entered once, the audit chain intact. The restart
disturbs everyone on the shared lab for a few seconds, so this test does it only twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    ChartIdentity,
    attempts,
    chain_problems,
    healthz,
    history,
    record,
    wait_promoted,
)
from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest

pytestmark = [pytest.mark.lab, pytest.mark.disruptive]

NAME = "survivor"
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "5s"},
    {"name": "canary-20", "weight": 20, "duration": "5s"},
    {"name": "canary-60", "weight": 60, "duration": "5s"},
    {"name": "full", "weight": 100},
]


def restart_apiserver(lab: Lab) -> float:
    """Stop and start the apiserver (its port and etcd stay); the seconds it was away."""
    started = time.monotonic()
    try:
        lab.restart_component("apiserver")
    except BaseException:
        lab.start_component("apiserver")  # never leave the shared lab without an apiserver
        raise
    return time.monotonic() - started


def test_operator_reconnects_after_apiserver_restarts(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    chart_identity: ChartIdentity,
) -> None:
    create_route(kube_api, namespace, "gatewayAPI", NAME)
    op = OperatorProcess(crd, [namespace], kubeconfig=chart_identity.kubeconfig).start()
    downtimes = []

    def serving(stage: str) -> dict[str, Any] | None:
        status = rollouts.status(NAME)
        current = status.get("stage") or {}
        return status if current.get("name") == stage and current.get("readyAt") else None

    try:
        rollouts.apply(rollout_manifest(NAME, "1.0.0", stages=STAGES))
        rollouts.wait_phase(NAME, "Succeeded", timeout=90)
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=STAGES))
        for stage in ("shadow", "canary-60"):
            # Restart once the candidate serves in the stage: the lab's node simulator does not
            # retry a pod status write that fails while the apiserver is away (a kubelet would),
            # so a pod starting at that moment would stay Pending for good.
            wait_for(f"{NAME} to serve in stage {stage}", lambda s=stage: serving(s), timeout=90)
            downtimes.append(restart_apiserver(crd))
            # Our own client's pooled connections died with the apiserver: drop them.
            kube_api.rest_client.pool_manager.clear()
        status = wait_promoted(rollouts, NAME, "2.0.0", timeout=120)
        assert op.alive(), f"the operator exited:\n{op.log_tail()}"
        assert healthz(op) == 200
    finally:
        op.stop()

    [attempt] = attempts(history(status))
    assert attempt.stages_entered == [s["name"] for s in STAGES]
    assert attempt.outcomes == ["Promoted"]
    assert not chain_problems(status)
    record(
        crd,
        "apiserver-restart",
        {
            "restarts": len(downtimes),
            "apiserver_away_seconds": [round(d, 1) for d in downtimes],
            "rollout": "Succeeded",
            "stages_skipped_or_repeated": 0,
            "operator_exits": 0,
        },
    )
