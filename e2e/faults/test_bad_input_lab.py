"""The bad-input table (tests/bad_input/cases.py) against the lab's apiserver and a running
operator (as the chart's ServiceAccount), all in one namespace at once.

- What the apiserver refuses, it refuses with the table's words.
- What it stores, the operator marks: InvalidSpec, or Stalled at run time (missing route,
  Secret, a pod template the apiserver refuses) with a Stalled condition of the table's reason
  and a Warning Event with the table's words; hostile but harmless input just works.
- A status written by a hostile user: a garbage one is refused by the status schema; wiping it
  makes the operator start over sensibly (the version that serves is recorded again).
- Meanwhile the operator stays healthy (/healthz 200 throughout, never exits) and a good
  rollout in the same namespace is promoted.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.faults.support import (
    ChartIdentity,
    chain_problems,
    condition,
    history,
    record,
    wait_promoted,
)
from e2e.harness import GROUP, PLURAL, VERSION, OperatorProcess, Rollouts, Timeout, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import Gateway, create_route, rollout_manifest
from tests.bad_input.cases import CASES, Case

pytestmark = pytest.mark.lab

GOOD = "steady"
STATUS_TARGET = "hostile-status"
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "2s"},
    {"name": "canary", "weight": 50, "duration": "2s"},
    {"name": "full", "weight": 100},
]


def create(api: k8s.ApiClient, namespace: str, manifest: dict[str, Any]) -> str | None:
    """Create ``manifest`` as sent (its own apiVersion); the apiserver's refusal, or None."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    try:
        k8s.CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, namespace, PLURAL, manifest
        )
    except ApiException as exc:
        try:
            message = json.loads(exc.body or "").get("message") or ""
        except ValueError:
            message = exc.body or ""
        return f"{exc.status} {message}"
    return None


class HealthWatch:
    """Polls the operator's /healthz in the background and counts anything but 200."""

    def __init__(self, op: OperatorProcess) -> None:
        self.url = op.metrics_url.replace("/metrics", "/healthz")
        self.polls = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.polls += 1
            try:
                ok = httpx.get(self.url, timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.failures += not ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def held(rollouts: Rollouts, case: Case) -> dict[str, Any]:
    """Wait for the case's Stalled condition (reason and words) and its Warning Event."""
    words = case.operator or case.runtime or ""

    def probe() -> dict[str, Any] | None:
        status = rollouts.status(case.id)
        stalled = condition(status, "Stalled")
        if stalled.get("status") != "True" or stalled.get("reason") != case.reason:
            return None
        warned = any(
            e.type == "Warning" and e.reason == case.reason and words in (e.message or "")
            for e in rollouts.events(case.id)
        )
        return status if warned else None

    try:
        return wait_for(f"{case.id} to be held ({case.reason})", probe, timeout=90)
    except Timeout as exc:
        status = rollouts.status(case.id)
        events = [(e.reason, (e.message or "")[:300]) for e in rollouts.events(case.id)]
        raise Timeout(f"{exc}\nconditions: {status.get('conditions')}\nevents: {events}") from None


def test_bad_input_is_refused_or_held_and_the_operator_carries_on(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
    chart_identity: ChartIdentity,
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="prom-auth"), string_data={"token": "t0k3n"}),
    )
    stored = [c for c in CASES if c.stored]
    for name in [GOOD, STATUS_TARGET, *(c.id for c in stored if c.route)]:
        create_route(kube_api, namespace, "gatewayAPI", name)
    op = OperatorProcess(crd, [namespace], kubeconfig=chart_identity.kubeconfig).start()
    health = HealthWatch(op)
    try:
        gateway.start_load(namespace, "gatewayAPI", GOOD, rps=10)
        good = rollout_manifest(
            GOOD,
            "1.0.0",
            stages=STAGES,
            metrics=[{"name": "errors", "template": "error-rate", "max": 0.05}],
            inconclusive_limit=10,
        )
        rollouts.apply(good)
        rollouts.apply(rollout_manifest(STATUS_TARGET, "1.0.0", stages=STAGES))

        # 1. The apiserver: refused with the table's words, or stored.
        answers = {case.id: create(kube_api, namespace, case.manifest()) for case in CASES}
        for case in CASES:
            answer = answers[case.id]
            if case.apiserver is None:
                assert answer is None, f"{case.id}: refused: {answer}"
            else:
                assert answer is not None and case.apiserver in answer, (case.id, answer)

        # 2. The good rollout goes on regardless.
        rollouts.wait_phase(GOOD, "Succeeded", timeout=90)
        rollouts.patch_spec(GOOD, {"model": {"version": "2.0.0", "uri": "s3://models/bc/2.0.0"}})

        # 3. What analysis or gates must meet needs a rollout: first versions, then 2.0.0.
        for case in stored:
            if case.rollout or not (case.operator or case.runtime):
                rollouts.wait_phase(case.id, "Succeeded", timeout=90)
        for case in stored:
            if case.rollout:
                rollouts.patch_spec(
                    case.id, {"model": {"version": "2.0.0", "uri": "s3://models/bc/2.0.0"}}
                )

        # 4. The operator: each stored case held with its reason and words, or working.
        outcomes: dict[str, str] = {}
        for case in stored:
            if case.operator or case.runtime:
                status = held(rollouts, case)
                if case.operator:
                    assert case.operator in condition(status, "Stalled")["message"], case.id
                outcomes[case.id] = f"held: {case.reason}"
            else:
                status = rollouts.status(case.id)
                assert status["phase"] == "Succeeded" and status["stableVersion"] == "1.0.0"
                outcomes[case.id] = "works"

        # 5. A hostile status: garbage is refused by the status schema ...
        custom = k8s.CustomObjectsApi(kube_api)
        rollouts.wait_phase(STATUS_TARGET, "Succeeded", timeout=60)
        with pytest.raises(ApiException) as refused:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, STATUS_TARGET,
                {"status": {"phase": "Hacked", "weights": {"candidate": "all of it"}}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        message = json.loads(refused.value.body)["message"]
        assert refused.value.status == 422
        assert 'status.phase: Unsupported value: "Hacked"' in message
        # ... and a wiped status makes the operator record the version that serves again.
        before = rollouts.status(STATUS_TARGET)
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, STATUS_TARGET, {"status": None},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

        def recovered() -> dict[str, Any] | None:
            status = rollouts.status(STATUS_TARGET)
            events = [e.event for e in history(status)]
            return (
                status if status.get("phase") == "Succeeded" and events == ["Initialized"] else None
            )

        after = wait_for("the wiped status to be rebuilt", recovered, timeout=60)
        assert after["stableVersion"] == before["stableVersion"] == "1.0.0"
        assert after["stableSlot"] == "a" and not chain_problems(after)

        wait_promoted(rollouts, GOOD, "2.0.0", timeout=120)
        assert op.alive(), f"the operator exited:\n{op.log_tail()}"
    finally:
        health.stop()
        gateway.stop_load(namespace, "gatewayAPI", GOOD)
        op.stop()
    assert health.polls > 20 and health.failures == 0, (health.polls, health.failures)
    record(
        crd,
        "bad-input",
        {
            "cases": len(CASES),
            "refused_by_apiserver": sum(1 for c in CASES if not c.stored),
            "held_invalid_spec": sum(1 for c in stored if c.operator),
            "held_at_run_time": sum(1 for c in stored if c.runtime),
            "accepted_and_working": sum(1 for c in stored if not (c.operator or c.runtime)),
            "healthz_polls": health.polls,
            "healthz_failures": health.failures,
            "good_rollout": "promoted",
            "hostile_status": "garbage refused (422); wiped status rebuilt",
            "outcomes": outcomes,
        },
    )
