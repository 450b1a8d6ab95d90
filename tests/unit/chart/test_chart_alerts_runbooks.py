"""What the runbooks say about their alerts: ModelRolloutRolledBack carries the rollback's
``reason`` as a label, ModelRolloutStuck fires after ``prometheusRule.stuckAfter`` (default
1h) without a stage change while a rollout is Progressing or Promoting."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.chart.rendering import FULLNAME, Render, only


def rules(render: Render, values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    docs = render({"prometheusRule": {"enabled": True, **(values or {})}})
    (group,) = only(docs, "PrometheusRule", FULLNAME)["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_the_rolled_back_alert_keeps_the_reason_label(render: Render) -> None:
    expr = rules(render)["ModelRolloutRolledBack"]["expr"]
    groupings = re.findall(r"sum by \(([^)]*)\)", expr)
    assert groupings, expr
    for labels in groupings:
        assert "reason" in {label.strip() for label in labels.split(",")}, expr


def test_the_stuck_alert_waits_one_hour_by_default_for_active_rollouts(render: Render) -> None:
    expr = rules(render)["ModelRolloutStuck"]["expr"]
    assert "[1h]" in expr, expr
    assert "Progressing" in expr and "Promoting" in expr, expr
