"""README, "Audit trail": "Events report the stage changes and verdicts". What the engine asks
the reconciler to post as Kubernetes Events on the rollout for each kind of decision."""

from __future__ import annotations

from engine_world import at, make_spec, observe, result, rolling

from modelrollout import engine
from modelrollout.api.models import Verdict
from modelrollout.engine.types import Decision, EmitEvent

ERROR_RATE = {"name": "error-rate", "template": "error-rate", "max": 0.01}


def events(d: Decision) -> list[tuple[str, str, str]]:
    return [(a.type, a.reason, a.message) for a in d.actions if isinstance(a, EmitEvent)]


def test_a_stage_change_is_a_normal_event_naming_both_stages_and_the_split() -> None:
    spec = make_spec(analysis={"interval": "1m", "metrics": []})
    d = engine.decide(spec, rolling(1), observe(weight=5), at(minutes=10))

    assert events(d) == [
        ("Normal", "StageEntered", "canary-5 -> canary-25: weight 25%, mirror 0%")
    ]


def test_a_failed_run_within_the_failure_limit_is_a_warning_naming_the_check() -> None:
    spec = make_spec(analysis={"interval": "1m", "failureLimit": 2, "metrics": [ERROR_RATE]})
    d = engine.decide(
        spec, rolling(1), observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]), at(minutes=1)
    )

    [(kind, reason, message)] = events(d)
    assert (kind, reason) == ("Warning", "AnalysisFailed")
    assert "error-rate" in message


def test_a_breach_rollback_is_a_warning_naming_the_check_and_the_stable_version() -> None:
    spec = make_spec(analysis={"interval": "1m", "failureLimit": 0, "metrics": [ERROR_RATE]})
    d = engine.decide(
        spec, rolling(1), observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]), at(minutes=1)
    )

    warnings = [e for e in events(d) if e[0] == "Warning"]
    assert [reason for _, reason, _ in warnings][-1] == "AnalysisFailed"
    assert "rolled back to 1.0.0" in warnings[-1][2] and "error-rate" in warnings[-1][2]


def test_a_promotion_is_a_normal_event() -> None:
    spec = make_spec(analysis={"interval": "1m", "metrics": [ERROR_RATE]})
    d = engine.decide(
        spec, rolling(3), observe(weight=100, analysis=[result(Verdict.SUCCESSFUL)]), at(minutes=1)
    )

    assert ("Normal", "Promoted") in [(kind, reason) for kind, reason, _ in events(d)]
