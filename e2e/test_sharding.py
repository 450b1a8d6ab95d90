"""Scaling out past one operator process: shards by label, and a standby per shard (issue 11).

Sharding: each process handles only the ModelRollouts matching its ``--selector`` (a
server-side label selector on its watch), so two shards never act on the same rollout. What each
process did is read off its own /metrics: ``modelrollout_stage_transitions_total`` has one
series per (rollout, stage) the process moved, and the sum for a rollout must equal the stage
changes in that rollout's audit trail. A rollout matching no shard is never touched. Shards need
distinct peering names (or ``--standalone``): replicas of different shards sharing one peering
object would pause each other.

Standby: a second replica of a shard (same ``--peering`` name, lower ``--priority``) stays
paused (it never reconciles) while the active one lives; when the active one is SIGKILLed (no
goodbye in the peering object) the standby resumes once the dead peer's record expires, within
``--peering-lifetime`` seconds, and completes the rollouts; the other shard is unaffected.

The pods are marked Ready without a model-server process and the rollouts have no analysis, so
each test takes well under a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import REPO, OperatorProcess, Rollouts, release_rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest

pytestmark = pytest.mark.lab

PEERING_CRDS = REPO / "charts" / "modelrollout-operator" / "crds" / "kopf-peerings.yaml"
SHARD_LABEL = "modelrollout.dev/shard"
LIFETIME_S = 15  # --peering-lifetime of the standby test (kopf's default is 60)
NO_PROCESS = {"lab.modelrollout.dev/no-process": "true"}
ROLLOUTS = {"alpha-0": "a", "alpha-1": "a", "beta-0": "b", "beta-1": "b", "nobody": None}


def stages(seconds: int) -> list[dict[str, Any]]:
    return [
        {"name": "canary-10", "weight": 10, "duration": f"{seconds}s"},
        {"name": "canary-50", "weight": 50, "duration": f"{seconds}s"},
        {"name": "full", "weight": 100},
    ]


def manifest(name: str, version: str, stage_s: int) -> dict[str, Any]:
    body = rollout_manifest(name, version, stages=stages(stage_s), metrics=[])
    shard = ROLLOUTS[name]
    if shard is not None:
        body["metadata"]["labels"] = {SHARD_LABEL: shard}
    body["spec"]["template"]["metadata"] = {"annotations": NO_PROCESS}
    return body


def transitions(op: OperatorProcess, namespace: str) -> Counter[str]:
    """Stage transitions this process made, by rollout (from its own /metrics)."""
    response = httpx.get(op.metrics_url, timeout=10)
    response.raise_for_status()
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "modelrollout_stage_transitions_total"
                and sample.labels.get("namespace") == namespace
            ):
                found[sample.labels["rollout"]] += int(sample.value)
    return found


def reconciles(op: OperatorProcess) -> int:
    response = httpx.get(op.metrics_url, timeout=10)
    response.raise_for_status()
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "modelrollout_reconcile_duration_seconds_count"
    )


def stage_changes(status: dict[str, Any]) -> int:
    return sum(1 for h in status.get("history") or [] if h["event"] == "StageEntered")


def promoted(rollouts: Rollouts, names: list[str], version: str) -> bool:
    return all(
        (s := rollouts.status(n)).get("phase") == "Succeeded" and s.get("stableVersion") == version
        for n in names
    )


def start_rollouts(rollouts: Rollouts, api: k8s.ApiClient, namespace: str, stage_s: int) -> None:
    """Every rollout at version 1.0.0, the sharded ones Succeeded, then all at 2.0.0."""
    sharded = [n for n, shard in ROLLOUTS.items() if shard]
    for name in ROLLOUTS:
        create_route(api, namespace, "gatewayAPI", name)
        rollouts.apply(manifest(name, "1.0.0", stage_s))
    wait_for(
        "the sharded rollouts' first versions",
        lambda: promoted(rollouts, sharded, "1.0.0"),
        timeout=90,
    )
    for name in ROLLOUTS:
        rollouts.apply(manifest(name, "2.0.0", stage_s))


def shard(lab: Lab, namespace: str, selector: str, *extra: str) -> OperatorProcess:
    return OperatorProcess(lab, [namespace], extra_args=["--selector", selector, *extra])


@pytest.fixture
def peering(crd: Lab, kube_api: k8s.ApiClient, namespace: str) -> Iterator[str]:
    """kopf's peering CRDs (from the chart, left installed) and the namespace's KopfPeering
    objects ``shard-a`` and ``shard-b`` (kopf patches a peering object, never creates one)."""
    crd.kubectl("apply", "-f", str(PEERING_CRDS))
    crd.wait_established("kopfpeerings.kopf.dev")
    custom = k8s.CustomObjectsApi(kube_api)
    for name in ("shard-a", "shard-b"):
        body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name}}
        custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", body)
    yield namespace


@pytest.fixture(autouse=True)
def release_finalizers(kube_api: k8s.ApiClient, namespace: str) -> Iterator[None]:
    """After the test (its operators are stopped by then) drop kopf's finalizers, so deleting
    the namespace does not wait for an operator forever."""
    yield
    release_rollouts(kube_api, namespace)


def test_two_shards_never_act_on_the_same_rollout(
    peering: str, crd: Lab, rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str
) -> None:
    ops = {
        "a": shard(crd, namespace, f"{SHARD_LABEL}=a", "--peering", "shard-a"),
        "b": shard(crd, namespace, f"{SHARD_LABEL}=b", "--peering", "shard-b"),
    }
    try:
        for op in ops.values():
            op.start()
        start_rollouts(rollouts, kube_api, namespace, stage_s=2)
        sharded = [n for n, s in ROLLOUTS.items() if s]
        wait_for("every sharded rollout promoted", lambda: promoted(rollouts, sharded, "2.0.0"))
        seen = {name: transitions(op, namespace) for name, op in ops.items()}
    finally:
        for op in ops.values():
            op.stop()

    for name, shard_of in ROLLOUTS.items():
        status = rollouts.status(name)
        if shard_of is None:
            assert status == {}, f"{name} matches no shard but was acted on: {status}"
            assert all(name not in counts for counts in seen.values())
            continue
        other = "b" if shard_of == "a" else "a"
        # Every stage change in the trail was made by the rollout's own shard, and only there.
        assert seen[shard_of][name] == stage_changes(status) == 3, (name, seen, status["history"])
        assert name not in seen[other], f"shard {other} acted on {name}: {seen[other]}"


def test_a_standby_takes_over_its_shard_when_the_active_replica_is_killed(
    peering: str, crd: Lab, rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str
) -> None:
    peered = ("--peering", "shard-a", "--peering-lifetime", str(LIFETIME_S))
    active = shard(crd, namespace, f"{SHARD_LABEL}=a", *peered, "--priority", "200")
    standby = shard(crd, namespace, f"{SHARD_LABEL}=a", *peered, "--priority", "100")
    other = shard(crd, namespace, f"{SHARD_LABEL}=b", "--peering", "shard-b")
    shard_a = [n for n, s in ROLLOUTS.items() if s == "a"]
    shard_b = [n for n, s in ROLLOUTS.items() if s == "b"]
    try:
        for op in (active, standby, other):
            op.start()
        start_rollouts(rollouts, kube_api, namespace, stage_s=4)
        wait_for(
            "shard a's rollouts to be in their first stage with traffic",
            lambda: all(
                (rollouts.status(n).get("stage") or {}).get("readyAt")
                and rollouts.status(n).get("candidateVersion") == "2.0.0"
                for n in shard_a
            ),
            timeout=90,
        )
        assert reconciles(active) > 0
        assert reconciles(standby) == 0, "the standby reconciled while the active replica lived"
        before_kill = transitions(active, namespace)

        active.kill()
        killed = time.monotonic()
        wait_for("the standby to resume", lambda: reconciles(standby) > 0, timeout=LIFETIME_S + 45)
        takeover_s = time.monotonic() - killed
        wait_for(
            "every rollout of both shards promoted",
            lambda: promoted(rollouts, shard_a + shard_b, "2.0.0"),
            timeout=90,
        )
        after = transitions(standby, namespace)
        seen_b = transitions(other, namespace)
    finally:
        for op in (active, standby, other):
            op.stop()

    # kopf resumes a standby when the dead peer's record expires; 10 s of slack for a busy
    # machine (the standby's first reconcile needs its watch and daemons to start).
    assert takeover_s <= LIFETIME_S + 10, f"takeover took {takeover_s:.1f}s"
    for name in shard_a:
        changes = stage_changes(rollouts.status(name))
        # The killed replica's counts are those scraped just before the kill: a transition it
        # made after the scrape would show up as a deficit here, never as a double.
        assert before_kill[name] + after[name] <= changes == 3, (name, before_kill, after)
        assert after[name] >= 1, f"the standby never moved {name}"
        assert name not in seen_b
    for name in shard_b:
        assert seen_b[name] == stage_changes(rollouts.status(name)) == 3
        assert name not in after
    assert rollouts.status("nobody") == {}
