"""SIGKILL of the operator at random moments while several rollouts run at once.

Four rollouts in one namespace keep rolling out new versions with short stages; about 40% of the
versions are broken (the model server's FAULT_ERROR_RATE=1) and must be rolled back by the
error-rate check. The operator, running as the Helm chart's ServiceAccount, is SIGKILLed at
random moments (offsets from a seeded RNG, ``MODELROLLOUT_FAULT_SEED``) and restarted at once,
at least 30 times. Then, for every rollout:

- no wrong promotion: no broken version ever became stable (trail and observed status);
- nothing stuck: every rollout reaches a terminal phase within a deadline after the last kill;
- no skipped or repeated stage: each attempt's StageEntered sequence is a prefix of the stages,
  and each attempt ends with at most one terminal transition;
- the audit chain verifies.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    TERMINAL,
    ChartIdentity,
    attempts,
    chain_problems,
    history,
    polling,
    promoted_versions,
    record,
    stage_problems,
)
from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import Gateway, create_route, rollout_manifest

pytestmark = pytest.mark.lab

SEED = int(os.environ.get("MODELROLLOUT_FAULT_SEED", "1207"))
KILLS = int(os.environ.get("MODELROLLOUT_FAULT_KILLS", "30"))
NAMES = ("kill-a", "kill-b", "kill-c", "kill-d")
BAD_SHARE = 0.4
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "2s"},
    {"name": "canary-10", "weight": 10, "duration": "2s"},
    {"name": "canary-50", "weight": 50, "duration": "2s"},
    {"name": "full", "weight": 100},
]
STAGE_NAMES = [s["name"] for s in STAGES]
# The built-in error-rate template over a 10s window and this version's own series only, so a
# broken predecessor in the same slot cannot fail a good version (nor the reverse).
_SERIES = 'namespace="{{ namespace }}",service="{{ target }}",version="{{ version }}"'
ERROR_RATE = (
    f'(sum(rate(model_requests_total{{{_SERIES},code=~"5.."}}[10s])) or vector(0))'
    f" / sum(rate(model_requests_total{{{_SERIES}}}[10s]))"
)


def is_bad(name: str, k: int) -> bool:
    return k > 1 and random.Random(f"{SEED}-{name}-{k}").random() < BAD_SHARE


def manifest(name: str, k: int) -> dict[str, Any]:
    return rollout_manifest(
        name,
        f"{k}.0.0",
        stages=STAGES,
        metrics=[{"name": "errors", "query": ERROR_RATE, "max": 0.05}],
        env={"FAULT_ERROR_RATE": "1"} if is_bad(name, k) else {},
        failure_limit=0,
        inconclusive_limit=4,
        on_inconclusive="Rollback",
    )


def test_sigkill_at_random_moments_during_rollouts(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
    chart_identity: ChartIdentity,
) -> None:
    kill_rng = random.Random(SEED)
    applied: dict[str, int] = {}
    stable_seen: dict[str, set[str]] = {name: set() for name in NAMES}
    bad: set[tuple[str, str]] = set()

    def apply(name: str, k: int) -> None:
        rollouts.apply(manifest(name, k))
        applied[name] = k
        if is_bad(name, k):
            bad.add((name, f"{k}.0.0"))

    def settled(name: str) -> dict[str, Any] | None:
        obj = rollouts.get(name)
        status: dict[str, Any] = obj.get("status") or {}
        if status.get("stableVersion"):
            stable_seen[name].add(status["stableVersion"])
        done = (
            status.get("observedGeneration") == obj["metadata"]["generation"]
            and status.get("phase") in TERMINAL
        )
        return status if done else None

    for name in NAMES:
        create_route(kube_api, namespace, "gatewayAPI", name)
        gateway.start_load(namespace, "gatewayAPI", name, rps=8)
        apply(name, 1)

    op = OperatorProcess(
        crd,
        [namespace],
        kubeconfig=chart_identity.kubeconfig,
        extra_args=["--history-limit", "200"],
    )
    kills, started = 0, time.monotonic()
    try:
        while kills < KILLS:
            op.start()
            # The fault schedule: a random moment, during which the rollouts are kept busy.
            for _ in polling(time.monotonic() + kill_rng.uniform(0.2, 2.5)):
                for name in NAMES:
                    if settled(name) is not None:
                        apply(name, applied[name] + 1)
            assert op.alive(), f"the operator exited on its own:\n{op.log_tail()}"
            op.kill()
            kills += 1
        kill_phase = time.monotonic() - started
        last_kill = time.monotonic()
        op.start()
        finals = {
            name: wait_for(f"{name} to settle after the last kill", lambda n=name: settled(n), 150)
            for name in NAMES
        }
        settle_seconds = time.monotonic() - last_kill
        assert op.alive()
    finally:
        op.stop()
        for name in NAMES:
            gateway.stop_load(namespace, "gatewayAPI", name)

    wrong, skipped, doubled, chains = [], [], [], []
    tally = {"Promoted": 0, "RolledBack": 0, "Failed": 0, "attempts": 0}
    for name, status in finals.items():
        trail = history(status)
        chains += [f"{name}: {p}" for p in chain_problems(status)]
        wrong += [(name, v) for v in promoted_versions(status) if (name, v) in bad]
        wrong += [(name, v) for v in stable_seen[name] if (name, v) in bad]
        for attempt in attempts(trail):
            tally["attempts"] += 1
            skipped += stage_problems(attempt, STAGE_NAMES)
            if len(attempt.outcomes) > 1:
                doubled.append((name, attempt.version, attempt.outcomes))
            for outcome in attempt.outcomes:
                tally[outcome] += 1
            if (name, attempt.version) in bad:
                assert attempt.outcomes in ([], ["RolledBack"]), (name, attempt.version)
    counts = {
        "seed": SEED,
        "kills": kills,
        "kill_phase_seconds": round(kill_phase),
        "settled_seconds_after_last_kill": round(settle_seconds),
        "versions_applied": sum(applied.values()),
        "broken_versions_applied": len(bad),
        "attempts": tally["attempts"],
        "promoted": tally["Promoted"],
        "rolled_back": tally["RolledBack"],
        "failed": tally["Failed"],
        "wrong_promotions": len(wrong),
        "stuck": 0,
        "skipped_or_repeated_stages": len(skipped),
        "double_transitions": len(doubled),
        "chain_problems": len(chains),
    }
    record(crd, "operator-sigkill", counts)
    assert kills >= 30
    assert not wrong, f"broken versions promoted: {wrong}"
    assert not skipped, skipped
    assert not doubled, doubled
    assert not chains, chains
    # The rollouts did make progress under the kills: good versions were promoted, broken
    # ones rolled back.
    assert tally["Promoted"] >= 3 and tally["RolledBack"] >= 1, counts
