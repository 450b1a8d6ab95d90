"""README, "Audit trail": the entries a decision appends to status.history also go to the
operator's log and to ``audit`` webhooks, and stage changes and rollbacks are counted in
``modelrollout_stage_transitions`` and ``modelrollout_rollbacks``.

These are the operator's wiring (``app.build_memo``'s ``on_decision``), below any lab: each
test hands it a stored body and a decision and looks at what came out.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
import structlog
from kubernetes import client as k8s

from modelrollout import engine, observability
from modelrollout.app import build_memo
from modelrollout.engine.types import Decision, Observation
from modelrollout.observability import OperatorMetrics
from tests.unit.engine.engine_world import at, command, make_spec, observe, rolling

AUDIT_HOOK = [{"name": "sink", "type": "audit", "url": "http://audit.test/in"}]


def stored_body(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "fraud", "generation": 1, "uid": "u-1"},
        "spec": spec,
        "status": status,
    }


def a_decision(
    webhooks: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Observation, Decision]:
    """An abort at canary-25: two new audit entries (Command, RolledBack)."""
    spec = make_spec(webhooks=webhooks or [])
    before = rolling(2)
    obs = observe(weight=25, command=command("abort", actor="carol"))
    decision = engine.decide(spec, before, obs, at(minutes=2))
    body = stored_body(
        spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        before.model_dump(mode="json", by_alias=True),
    )
    return body, obs, decision


class Recorded:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.metrics = OperatorMetrics()
        monkeypatch.setattr(observability, "METRICS", self.metrics)
        self.memo = build_memo(k8s.ApiClient(), prometheus_url=None)
        assert self.memo.reconciler is not None
        self.reconciler = self.memo.reconciler
        self.spawned: list[Awaitable[None]] = []
        monkeypatch.setattr(self.reconciler, "spawn", self.spawned.append)

    def decide(self, body: dict[str, Any], obs: Observation, decision: Decision) -> list[Any]:
        on_decision = self.reconciler.on_decision
        assert on_decision is not None
        with structlog.testing.capture_logs() as lines:
            on_decision(body, obs, decision, 0.01)
        return [line for line in lines if line.get("event") == "audit"]

    def close(self) -> None:
        for coro in self.spawned:
            coro.close()  # type: ignore[attr-defined]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Any:
    r = Recorded(monkeypatch)
    yield r
    r.close()


def test_every_new_audit_entry_is_one_log_line_with_its_decision(recorded: Recorded) -> None:
    body, obs, decision = a_decision()
    new = decision.status.history[len(body["status"].get("history") or []) :]
    assert [e.event for e in new] == ["Command", "RolledBack"]

    lines = recorded.decide(body, obs, decision)

    assert [line["decision"] for line in lines] == ["Command", "RolledBack"]
    assert [line["seq"] for line in lines] == [e.seq for e in new]
    assert [line["hash"] for line in lines] == [e.hash for e in new]
    assert all((line["namespace"], line["rollout"]) == ("ml", "fraud") for line in lines)
    assert "aborted by carol" in lines[-1]["reason"]


def test_entries_already_in_the_stored_status_are_not_logged_again(recorded: Recorded) -> None:
    body, obs, decision = a_decision()
    body["status"] = decision.status.model_dump(mode="json", by_alias=True)

    assert recorded.decide(body, obs, decision) == []


def test_new_entries_go_to_the_audit_webhook_only_when_one_is_configured(
    recorded: Recorded,
) -> None:
    body, obs, decision = a_decision()
    recorded.decide(body, obs, decision)
    assert recorded.spawned == []

    body, obs, decision = a_decision(webhooks=AUDIT_HOOK)
    recorded.decide(body, obs, decision)
    [delivery] = recorded.spawned
    assert delivery.cr_code.co_name == "audit"  # type: ignore[attr-defined]
    entries = delivery.cr_frame.f_locals["entries"]  # type: ignore[attr-defined]
    assert [e.event for e in entries] == ["Command", "RolledBack"]


def test_stage_changes_and_rollbacks_are_counted(recorded: Recorded) -> None:
    spec = make_spec(analysis={"interval": "1m", "metrics": []})
    before = rolling(1)
    obs = observe(weight=5)
    decision = engine.decide(spec, before, obs, at(minutes=10))
    assert [e.to_stage for e in decision.status.history if e.event == "StageEntered"] == [
        "canary-25"
    ]
    body = stored_body(
        spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        before.model_dump(mode="json", by_alias=True),
    )
    recorded.decide(body, obs, decision)
    recorded.decide(*a_decision())

    text = recorded.metrics.exposition().decode()
    assert (
        'modelrollout_stage_transitions_total{namespace="ml",rollout="fraud",to="canary-25"} 1.0'
        in text
    )
    assert 'modelrollout_rollbacks_total{namespace="ml",reason="Aborted",rollout="fraud"} 1.0' in (
        text
    )
