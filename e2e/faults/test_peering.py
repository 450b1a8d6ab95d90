"""Two operator replicas with kopf peering (the chart's leader election), no sharding.

Both run ``--peering <name>`` as the chart's ServiceAccount against the chart's KopfPeering
object, with different priorities. Only the higher one acts: its reconcile counter
(``modelrollout_reconcile_duration_seconds_count`` on its own /metrics) grows, the standby's
stays at zero, and the rollout's trail has every transition once. Then the active replica is
SIGKILLed mid-rollout (no goodbye in the peering object): the standby takes over once the dead
peer's keep-alive expires (kopf's peering lifetime, 60s) and completes the rollout.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    attempts,
    chain_problems,
    history,
    install_chart_rbac,
    reconcile_count,
    record,
    remove_chart_rbac,
    wait_promoted,
)
from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest

pytestmark = pytest.mark.lab

NAME = "peered"
PEERING_LIFETIME_S = 60  # kopf's default settings.peering.lifetime
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "3s"},
    {"name": "canary-20", "weight": 20, "duration": "8s"},
    {"name": "canary-60", "weight": 60, "duration": "3s"},
    {"name": "full", "weight": 100},
]


def test_one_replica_acts_and_the_standby_takes_over(
    peering_crds: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
) -> None:
    lab = peering_crds
    identity = install_chart_rbac(lab, namespace, leader_election=True)
    create_route(kube_api, namespace, "gatewayAPI", NAME)

    def replica(priority: int) -> OperatorProcess:
        return OperatorProcess(
            lab,
            [namespace],
            kubeconfig=identity.kubeconfig,
            extra_args=["--peering", identity.peering, "--priority", str(priority)],
        )

    active, standby = replica(200), replica(100)
    try:
        active.start()
        standby.start()
        rollouts.apply(rollout_manifest(NAME, "1.0.0", stages=STAGES))
        rollouts.wait_phase(NAME, "Succeeded", timeout=90)
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=STAGES))
        rollouts.wait_stage(NAME, "canary-20", timeout=90)
        acted_before_kill = reconcile_count(active)
        assert acted_before_kill > 0
        assert reconcile_count(standby) == 0, "the standby reconciled while the active one lived"

        active.kill()
        killed_at = time.monotonic()
        wait_for(
            "the standby to take over",
            lambda: reconcile_count(standby) > 0,
            timeout=PEERING_LIFETIME_S + 45,
        )
        takeover = time.monotonic() - killed_at
        status = wait_promoted(rollouts, NAME, "2.0.0", timeout=90)
        assert standby.alive()
    finally:
        active.stop()
        standby.stop()
        remove_chart_rbac(lab, identity)

    # Neither the two replicas together nor the takeover made a transition twice.
    [attempt] = attempts(history(status))
    assert attempt.stages_entered == [s["name"] for s in STAGES]
    assert attempt.outcomes == ["Promoted"]
    assert not chain_problems(status)
    record(
        lab,
        "two-replicas-peering",
        {
            "active_reconciles_before_kill": acted_before_kill,
            "standby_reconciles_before_kill": 0,
            "takeover_seconds_after_sigkill": round(takeover, 1),
            "peering_lifetime_seconds": PEERING_LIFETIME_S,
            "double_transitions": 0,
            "rollout": "Succeeded",
        },
    )
