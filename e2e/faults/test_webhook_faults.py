"""Webhooks that hang or fail.

- A pre-rollout gate that hangs: each call times out, which counts as inconclusive; past the
  limit the rollout is held (Stalled, GateTimeout) and the candidate never gets traffic. Once the
  gate answers 200 the rollout goes on and is promoted.
- A confirm-promotion gate that answers 500: a closed gate. The rollout stays in the stage
  before the last one, however often it asks; once the gate answers 200 it is promoted.
- Notification and audit webhooks that hang or answer 500: they are retried in the background
  and never block the rollout, which is promoted in far less time than one notification's
  retries take.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    Behaviour,
    ChartIdentity,
    FakeServer,
    attempts,
    condition,
    history,
    record,
    wait_promoted,
)
from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest

pytestmark = pytest.mark.lab

STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "2s"},
    {"name": "canary-50", "weight": 50, "duration": "2s"},
    {"name": "full", "weight": 100},
]
NOTIFY_TIMEOUT_S = 10  # one notification: 4 attempts of 10s plus backoff, about 47s


def manifest(name: str, version: str, webhooks: list[dict[str, Any]]) -> dict[str, Any]:
    return rollout_manifest(
        name,
        version,
        stages=STAGES,
        webhooks=webhooks,
        inconclusive_limit=1,
        on_inconclusive="Hold",
    )


def test_gates_hold_and_notifications_never_block(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    fake_server: FakeServer,
    chart_identity: ChartIdentity,
) -> None:
    fake_server.set("/hang", Behaviour(delay=120))
    fake_server.set("/fail", Behaviour(status=500, body={"error": "gate exploded"}))
    hooks = {
        "pre-hang": [
            {
                "name": "warmup",
                "type": "pre-rollout",
                "url": fake_server.url("/hang"),
                "timeout": "1s",
            }
        ],
        "confirm-500": [
            {"name": "approval", "type": "confirm-promotion", "url": fake_server.url("/fail")}
        ],
        "notify-hang": [
            {
                "name": "slack",
                "type": "notify",
                "url": fake_server.url("/hang/notify"),
                "timeout": f"{NOTIFY_TIMEOUT_S}s",
            },
            {"name": "siem", "type": "audit", "url": fake_server.url("/fail/audit")},
        ],
    }
    for name in hooks:
        create_route(kube_api, namespace, "gatewayAPI", name)
    op = OperatorProcess(crd, [namespace], kubeconfig=chart_identity.kubeconfig).start()
    try:
        # Gates apply to rollouts, not to a first version: all three start from 1.0.0.
        for name, webhooks in hooks.items():
            rollouts.apply(manifest(name, "1.0.0", webhooks))
        for name in hooks:
            rollouts.wait_phase(name, "Succeeded", timeout=90)
        for name, webhooks in hooks.items():
            rollouts.apply(manifest(name, "2.0.0", webhooks))

        # Notifications that hang and audit records refused with 500 do not slow the rollout.
        status = wait_promoted(rollouts, "notify-hang", "2.0.0", timeout=60)
        [attempt] = attempts(history(status))
        took = (attempt.entries[-1].time - attempt.entries[0].time).total_seconds()
        assert attempt.outcomes == ["Promoted"]
        assert took < NOTIFY_TIMEOUT_S * 4, (
            f"the rollout took {took:.0f}s: notifications blocked it"
        )
        assert fake_server.received("/hang/notify"), "no notification was attempted"
        assert fake_server.received("/fail/audit"), "no audit record was attempted"

        # A hanging pre-rollout gate: held, Stalled with GateTimeout, no traffic at all.
        def gate_held() -> dict[str, Any] | None:
            status = rollouts.status("pre-hang")
            return status if condition(status, "Stalled").get("reason") == "GateTimeout" else None

        status = wait_for("pre-hang to be held on its gate", gate_held, timeout=90)
        assert status["phase"] == "Progressing"
        assert "warmup" in condition(status, "Stalled")["message"]
        assert not (status.get("stage") or {}).get("readyAt")
        assert (status["weights"]["candidate"], status["weights"]["mirror"]) == (0, 0)
        hung_calls = len(fake_server.received("/hang")) - len(fake_server.received("/hang/notify"))

        # A confirm-promotion gate answering 500: the rollout waits before the last stage.
        def audit_calls() -> int:
            return len(fake_server.received("/fail/audit"))

        def asked_three_times() -> dict[str, Any] | None:
            status = rollouts.status("confirm-500")
            return status if len(fake_server.received("/fail")) - audit_calls() >= 3 else None

        status = wait_for("the approval gate to be asked 3 times", asked_three_times, timeout=90)
        assert status["phase"] == "Progressing"
        assert status["stage"]["name"] == "canary-50"
        assert "waiting for confirm-promotion gates: approval" in status["message"]
        assert "Promoted" not in [e.event for e in history(status)]
        closed_calls = len(fake_server.received("/fail")) - audit_calls()

        # Both gates answer at last: both rollouts are promoted.
        fake_server.set("/hang", Behaviour(status=200, body={"ok": True}))
        fake_server.set("/fail", Behaviour(status=200, body={"ok": True}))
        for name in ("pre-hang", "confirm-500"):
            status = wait_promoted(rollouts, name, "2.0.0", timeout=90)
            [attempt] = attempts(history(status))
            assert attempt.stages_entered == [s["name"] for s in STAGES], name
            assert attempt.outcomes == ["Promoted"], name
    finally:
        op.stop()
    record(
        crd,
        "webhooks-hang-or-fail",
        {
            "pre_rollout_gate_calls_timed_out": hung_calls,
            "confirm_gate_calls_refused_500": closed_calls,
            "advanced_past_a_closed_gate": 0,
            "notify_promotion_seconds": round(took, 1),
            "notifications_attempted": len(fake_server.received("/hang/notify")),
            "audit_records_attempted": len(fake_server.received("/fail/audit")),
        },
    )
