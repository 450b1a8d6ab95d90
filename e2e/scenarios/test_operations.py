"""Operating a rollout on the lab: operator crashes, a Prometheus outage, a new version
mid-rollout, spec edits that are not a new model (issues 5 and 9).

Each test runs the operator as a real process against its own namespace, with steady load
through the lab gateway, short stages and a 2 s analysis interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import (
    Gateway,
    audit_problems,
    condition,
    create_route,
    history_of,
    managed_split,
    operator_metric,
    parse_time,
    rollout_manifest,
    stages_entered,
)

pytestmark = pytest.mark.lab

NAME = "scorer"
ALL_STAGES = ["shadow", "canary-5", "canary-25", "full"]
ERROR_RATE = {"name": "error-rate", "template": "error-rate", "max": 0.5}
OUTAGE_S = 3.0  # how long a killed operator stays down before the next one starts


def stage_of(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("stage") or {}


def seconds_since(stamp: str | None) -> float:
    return -1.0 if not stamp else time.time() - parse_time(stamp)


def rollout_entries(status: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """The audit entries since the (last) RolloutStarted of ``version``."""
    history = status.get("history") or []
    starts = [
        i
        for i, h in enumerate(history)
        if h["event"] == "RolloutStarted" and (h.get("model") or {}).get("version") == version
    ]
    assert starts, f"no RolloutStarted for {version} in {[h['event'] for h in history]}"
    return list(history[starts[-1] :])


def entered(entries: list[dict[str, Any]]) -> list[str]:
    return [h["to"] for h in entries if h["event"] == "StageEntered"]


def status_when(
    rollouts: Rollouts,
    name: str,
    what: str,
    predicate: Callable[[dict[str, Any]], Any],
    timeout: float = 90,
) -> dict[str, Any]:
    """Poll the rollout's status until ``predicate`` holds; return that status."""

    def probe() -> dict[str, Any] | None:
        status = rollouts.status(name)
        return status if predicate(status) else None

    return wait_for(what, probe, timeout=timeout)


def succeeded_with(
    rollouts: Rollouts, version: str, timeout: float, name: str = NAME
) -> dict[str, Any]:
    return status_when(
        rollouts,
        name,
        f"{name} to promote {version}",
        lambda s: s.get("phase") == "Succeeded" and s.get("stableVersion") == version,
        timeout,
    )


def ready_replicas(rollouts: Rollouts, deployment: str) -> int:
    got = rollouts.apps.read_namespaced_deployment(deployment, rollouts.namespace)
    return int(got.status.ready_replicas or 0)


@contextmanager
def loaded(gateway: Gateway, namespace: str, *names: str, rps: float = 40) -> Iterator[None]:
    for name in names:
        gateway.start_load(namespace, "gatewayAPI", name, rps=rps)
    try:
        yield
    finally:
        for name in names:
            gateway.stop_load(namespace, "gatewayAPI", name)


def initialize(rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str, name: str) -> None:
    """Route plus first version 1.0.0, Succeeded."""
    create_route(kube_api, namespace, "gatewayAPI", name)
    rollouts.apply(rollout_manifest(name, "1.0.0"))
    rollouts.wait_phase(name, "Succeeded", timeout=90)


# --------------------------------------------------------------------------- a. SIGKILL

KILL_STAGES = [
    {"name": "shadow", "mirror": 100, "duration": "20s"},
    # Long enough that a restart on a loaded machine (imports, login, first reconcile) still
    # lands inside the stage it was killed in.
    {"name": "canary-5", "weight": 5, "duration": "40s"},
    {"name": "canary-25", "weight": 25, "duration": "4s"},
    {"name": "full", "weight": 100, "duration": "30s"},
]


def reconciled(op: OperatorProcess) -> bool:
    """The operator has decided on a Progressing rollout at least once (its phase gauge)."""
    value = operator_metric(op.metrics_url, "modelrollout_rollouts", phase="Progressing")
    return (value or 0) >= 1


def kill_and_replace(
    lab: Lab,
    namespace: str,
    rollouts: Rollouts,
    victim: OperatorProcess,
    moment: Callable[[dict[str, Any]], bool],
    what: str,
) -> OperatorProcess:
    """At ``moment``, SIGKILL ``victim``, stay down a few seconds, start a new operator; check
    that the new one carries on in the very same stage (name, startedAt, readyAt)."""
    before = status_when(rollouts, NAME, what, moment)
    victim.kill()
    assert not victim.alive()
    time.sleep(OUTAGE_S)  # the outage itself (no operator at all), not a wait on a condition
    assert rollouts.status(NAME)["stage"] == before["stage"], "nothing writes while it is down"
    successor = OperatorProcess(lab, [namespace]).start()
    try:
        wait_for(
            "the new operator's first reconcile of the rollout",
            lambda: reconciled(successor),
            timeout=30,
        )
        after = rollouts.status(NAME)
        assert after["phase"] == "Progressing", after.get("message")
        old, new = stage_of(before), stage_of(after)
        assert (new["name"], new["startedAt"]) == (old["name"], old["startedAt"]), (old, new)
        if old.get("readyAt"):
            assert new.get("readyAt") == old["readyAt"], (old, new)
    except BaseException:
        successor.stop()
        raise
    return successor


def test_sigkill_at_three_moments_resumes_the_same_stage(
    crd: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    initialize(rollouts, kube_api, namespace, NAME)
    successors: list[OperatorProcess] = []
    try:
        with loaded(gateway, namespace, NAME):
            rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=KILL_STAGES))
            current = operator
            moments: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
                (
                    "right after the rollout entered shadow",
                    lambda s: (
                        s.get("candidateVersion") == "2.0.0" and stage_of(s).get("name") == "shadow"
                    ),
                ),
                (
                    "canary-5 to be 4 s in (mid-stage)",
                    lambda s: (
                        stage_of(s).get("name") == "canary-5"
                        and seconds_since(stage_of(s).get("readyAt")) >= 4
                    ),
                ),
                (
                    "the last stage, full, to be entered",
                    lambda s: stage_of(s).get("name") == "full" and s.get("phase") == "Progressing",
                ),
            ]
            for what, moment in moments:
                current = kill_and_replace(crd, namespace, rollouts, current, moment, what)
                successors.append(current)
            status = succeeded_with(rollouts, "2.0.0", timeout=90)
    finally:
        for op in successors:
            op.stop()

    entries = rollout_entries(status, "2.0.0")
    assert entered(entries) == ALL_STAGES, [(h["event"], h.get("to")) for h in entries]
    assert [h["event"] for h in entries].count("Promoted") == 1
    assert len(history_of(status, "RolloutStarted")) == 1
    assert audit_problems(status) == []
    assert managed_split(kube_api, namespace, "gatewayAPI", NAME).only(f"{NAME}-b")


# --------------------------------------------------------------------------- b. Prometheus down


def with_analysis(manifest: dict[str, Any], **analysis: Any) -> dict[str, Any]:
    manifest["spec"]["analysis"].update(analysis)
    return manifest


@pytest.mark.disruptive
def test_prometheus_outage_holds_or_rolls_back_by_policy(
    crd: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    """Two rollouts live through one short outage of the shared Prometheus: ``hold``
    (onInconclusive Hold) stays in canary-5 and resumes afterwards, ``fallback``
    (onInconclusive Rollback, errorLimit 1) rolls back."""
    hold, fallback = "hold", "fallback"
    for name in (hold, fallback):
        create_route(kube_api, namespace, "gatewayAPI", name)
        rollouts.apply(rollout_manifest(name, "1.0.0"))
    for name in (hold, fallback):
        rollouts.wait_phase(name, "Succeeded", timeout=90)

    def stages(canary_5: str) -> list[dict[str, Any]]:
        return [
            {"name": "shadow", "mirror": 100, "duration": "4s"},
            {"name": "canary-5", "weight": 5, "duration": canary_5},
            {"name": "canary-25", "weight": 25, "duration": "4s"},
            {"name": "full", "weight": 100},
        ]

    # canary-5 ends (4 s) before the errors reach errorLimit (3 runs, 2 s apart): in between
    # only "never pass on an Error" keeps it there, afterwards also the Hold.
    canary_5_s, error_limit = 4.0, 3
    with loaded(gateway, namespace, hold, fallback):
        rollouts.apply(
            with_analysis(
                rollout_manifest(
                    fallback,
                    "2.0.0",
                    stages=stages("5m"),
                    metrics=[ERROR_RATE],
                    on_inconclusive="Rollback",
                    inconclusive_limit=20,
                ),
                errorLimit=1,
            )
        )
        rollouts.wait_stage(fallback, "shadow", timeout=60)
        rollouts.apply(
            with_analysis(
                rollout_manifest(
                    hold,
                    "2.0.0",
                    stages=stages(f"{canary_5_s:.0f}s"),
                    metrics=[ERROR_RATE],
                    on_inconclusive="Hold",
                    inconclusive_limit=20,
                ),
                errorLimit=error_limit,
            )
        )

        def canary_5_with_traffic(status: dict[str, Any]) -> bool:
            return stage_of(status).get("name") == "canary-5" and bool(
                stage_of(status).get("readyAt")
            )

        status_when(rollouts, fallback, "fallback in canary-5", canary_5_with_traffic)
        in_canary = status_when(rollouts, hold, "hold in canary-5", canary_5_with_traffic)
        ready_at = stage_of(in_canary)["readyAt"]

        crd.stop_component("prometheus")
        try:
            stopped = time.monotonic()
            errors_seen: list[int] = []
            # Watch until well past the stage's end (and the hold is in force, and fallback
            # has rolled back), at most 15 s: hold never leaves canary-5 meanwhile.
            stage_over = parse_time(ready_at) + canary_5_s + 3
            while time.monotonic() - stopped < 15:
                status = rollouts.status(hold)
                assert (status["phase"], stage_of(status)["name"]) == ("Progressing", "canary-5"), (
                    status.get("message")
                )
                assert stage_of(status)["readyAt"] == ready_at
                errors = int((status.get("analysis") or {}).get("errors") or 0)
                if not errors_seen or errors != errors_seen[-1]:
                    errors_seen.append(errors)
                if (
                    time.time() > stage_over
                    and errors > error_limit
                    and rollouts.status(fallback).get("phase") == "RolledBack"
                ):
                    break
                time.sleep(0.5)  # sampling period of an observation window, not a wait
            held = rollouts.status(hold)
            failed = rollouts.status(fallback)
            watched_until, down_for = time.time(), time.monotonic() - stopped
        finally:
            crd.start_component("prometheus")
        assert watched_until > stage_over, "the watch ended before canary-5's duration was over"
        assert down_for < 20

        # Hold: the errors grew run after run, and the Stalled condition says why.
        assert errors_seen == sorted(errors_seen) and errors_seen[-1] > error_limit, errors_seen
        stalled = condition(held, "Stalled")
        assert (stalled.get("status"), stalled.get("reason")) == ("True", "AnalysisError"), stalled
        assert "analysis errors" in stalled["message"], stalled
        assert all(r["verdict"] == "Error" for r in held["analysis"]["results"]), held["analysis"]

        # Rollback: the policy applied to the provider errors; traffic is all stable again.
        assert failed["phase"] == "RolledBack", failed.get("message")
        assert failed["stableVersion"] == "1.0.0"
        [rolled] = history_of(failed, "RolledBack")
        assert rolled["reason"].startswith("AnalysisError:"), rolled
        assert managed_split(kube_api, namespace, "gatewayAPI", fallback).only(f"{fallback}-a")

        # Prometheus is back: hold resumes from canary-5 and completes.
        done = succeeded_with(rollouts, "2.0.0", timeout=90, name=hold)
    assert entered(rollout_entries(done, "2.0.0")) == ALL_STAGES
    assert audit_problems(done) == []
    assert rollouts.status(fallback)["phase"] == "RolledBack"


# --------------------------------------------------------------------------- c. supersede


def test_a_new_version_supersedes_the_candidate_mid_rollout(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    initialize(rollouts, kube_api, namespace, NAME)
    slow = [
        {"name": "shadow", "mirror": 100, "duration": "4s"},
        {"name": "canary-5", "weight": 5, "duration": "5m"},
        {"name": "canary-25", "weight": 25, "duration": "4s"},
        {"name": "full", "weight": 100},
    ]
    with loaded(gateway, namespace, NAME):
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=slow))
        rollouts.wait_stage(NAME, "canary-5", timeout=90)
        # The status commits the stage first; the route follows right after.
        wait_for(
            "the canary-5 split on the route",
            lambda: (
                managed_split(kube_api, namespace, "gatewayAPI", NAME).weights
                == {f"{NAME}-a": 95, f"{NAME}-b": 5}
            ),
            timeout=30,
        )

        # 3.0.0 loads slowly, so the reads below fall before it can be ready (the operator
        # sees readiness the moment its Deployment reports it).
        rollouts.apply(rollout_manifest(NAME, "3.0.0", env={"STARTUP_DELAY_S": "8"}))

        # Status, route, status: while the stage has not got its traffic back (readyAt unset
        # on both reads), the route read in between must be 100% stable, nothing mirrored.
        first = status_when(
            rollouts,
            NAME,
            "3.0.0 to supersede 2.0.0",
            lambda s: s.get("candidateVersion") == "3.0.0",
            timeout=30,
        )
        split = managed_split(kube_api, namespace, "gatewayAPI", NAME)
        second = rollouts.status(NAME)
        assert stage_of(first)["name"] == "shadow" and not stage_of(first).get("readyAt")
        assert stage_of(second)["startedAt"] == stage_of(first)["startedAt"]
        assert not stage_of(second).get("readyAt"), "3.0.0 cannot be ready this fast (8 s load)"
        assert split.only(f"{NAME}-a"), split
        [note] = history_of(first, "Superseded")
        assert "2.0.0" in note["reason"] and "3.0.0" in note["reason"], note
        assert note["model"]["version"] == "2.0.0" and note["from"] == "canary-5"

        def slot_b_runs_3() -> bool:
            pods = [p for p in rollouts.pods(NAME, "b") if not p.metadata.deletion_timestamp]
            versions = {
                env.value
                for p in pods
                for c in p.spec.containers
                for env in c.env or []
                if env.name == "MODEL_VERSION"
            }
            return bool(pods) and versions == {"3.0.0"}

        wait_for("the candidate slot's pods to run MODEL_VERSION 3.0.0", slot_b_runs_3, timeout=60)
        status = succeeded_with(rollouts, "3.0.0", timeout=120)

    assert status["stableSlot"] == "b"
    # 2.0.0 got as far as canary-5; 3.0.0 walked every stage once, from stage 0.
    assert entered(rollout_entries(status, "2.0.0")) == ["shadow", "canary-5", *ALL_STAGES]
    assert len(history_of(status, "Superseded")) == 1
    assert audit_problems(status) == []
    assert managed_split(kube_api, namespace, "gatewayAPI", NAME).only(f"{NAME}-b")


# --------------------------------------------------------------------------- d. other spec edits


def test_a_spec_edit_that_keeps_the_model_starts_no_new_rollout(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    initialize(rollouts, kube_api, namespace, NAME)
    stages = [
        {"name": "shadow", "mirror": 100, "duration": "4s"},
        {"name": "canary-5", "weight": 5, "duration": "12s"},
        {"name": "canary-25", "weight": 25, "duration": "4s"},
        {"name": "full", "weight": 100},
    ]
    with loaded(gateway, namespace, NAME):
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=stages))
        before = rollouts.wait_stage(NAME, "canary-5", timeout=90)
        generation = rollouts.get(NAME)["metadata"]["generation"]
        rollouts.patch_spec(NAME, {"replicas": 2, "analysis": {"interval": "3s"}})

        after = status_when(
            rollouts,
            NAME,
            "the operator to act on the edit",
            lambda s: (s.get("observedGeneration") or 0) > generation,
            timeout=30,
        )
        assert stage_of(after)["name"] == "canary-5"
        assert stage_of(after)["startedAt"] == stage_of(before)["startedAt"]
        assert stage_of(after)["readyAt"] == stage_of(before)["readyAt"]
        assert len(history_of(after, "RolloutStarted")) == 1
        # The edit reaches the running slots (both, stable and candidate) without a rollout.
        wait_for(
            "both slots to run 2 ready replicas",
            lambda: all(ready_replicas(rollouts, f"{NAME}-{slot}") == 2 for slot in ("a", "b")),
            timeout=60,
        )
        status = succeeded_with(rollouts, "2.0.0", timeout=90)
    assert len(history_of(status, "RolloutStarted")) == 1
    assert stages_entered(status) == ALL_STAGES
    assert audit_problems(status) == []
