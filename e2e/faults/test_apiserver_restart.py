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
    {"name": "canary-20", "weight": 20, "duration": "10s"},
    {"name": "canary-60", "weight": 60, "duration": "10s"},
    {"name": "full", "weight": 100},
]


def restart_apiserver(lab: Lab) -> float:
    """Stop and start the apiserver (its port and etcd stay); the seconds it was away."""
    started = time.monotonic()
    try:
        lab.stop_component("apiserver")
    finally:
        lab.start_component("apiserver")  # never leave the shared lab without an apiserver
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

    def serving(*stages: str) -> dict[str, Any] | None:
        status = rollouts.status(NAME)
        current = status.get("stage") or {}
        return status if current.get("name") in stages and current.get("readyAt") else None

    restarted_in = []
    try:
        rollouts.apply(rollout_manifest(NAME, "1.0.0", stages=STAGES))
        rollouts.wait_phase(NAME, "Succeeded", timeout=90)
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=STAGES))
        # Restart once the candidate serves in shadow, and again in a canary stage: each
        # restart falls inside a stage the operator must carry on from.
        for stages in (("shadow",), ("canary-20", "canary-60")):
            now = wait_for(
                f"{NAME} to serve in stage {' or '.join(stages)}",
                lambda s=stages: serving(*s),
                timeout=90,
            )
            restarted_in.append(now["stage"]["name"])
            downtimes.append(restart_apiserver(crd))
            # Our own client's pooled connections died with the apiserver: drop them.
            kube_api.rest_client.pool_manager.clear()
        status = wait_promoted(rollouts, NAME, "2.0.0", timeout=120)
        assert op.alive(), f"the operator exited:\n{op.log_tail()}"
        assert healthz(op) == 200
    finally:
        op.stop()
        # The controller-manager's watches reconnect with a backoff: leave the lab to the
        # next test only once it acts again.
        controllers_started = time.monotonic()
        crd.wait_controllers()
        controllers_back = time.monotonic() - controllers_started

    [attempt] = attempts(history(status))
    assert attempt.stages_entered == [s["name"] for s in STAGES]
    assert attempt.outcomes == ["Promoted"]
    assert not chain_problems(status)
    record(
        crd,
        "apiserver-restart",
        {
            "restarts": len(downtimes),
            "restarted_in_stages": restarted_in,
            "controller_manager_back_after_s": round(controllers_back, 1),
            "apiserver_away_seconds": [round(d, 1) for d in downtimes],
            "rollout": "Succeeded",
            "stages_skipped_or_repeated": 0,
            "operator_exits": 0,
        },
    )
