"""The helpers the reconciler calls before decide (checks_due, gates_due), conditions over
time, requeue times, the history bound and bad input."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from engine_world import (
    T0,
    V1,
    at,
    make_spec,
    observe,
    result,
    rolling,
    settled,
    stage,
)

from modelrollout import engine
from modelrollout.api.models import (
    AnalysisStatus,
    HistoryEntry,
    MetricCheck,
    ModelRolloutStatus,
    Phase,
    Verdict,
    WebhookSpec,
)
from modelrollout.audit import append, verify
from modelrollout.engine.types import EnsureSlot, SetTraffic, Wake

SPEC = make_spec("2.0.0")
GATES = [
    {"name": "smoke", "type": "pre-rollout", "url": "http://gate.test/smoke"},
    {"name": "approve", "type": "confirm-promotion", "url": "http://gate.test/approve"},
    {"name": "slack", "type": "notify", "url": "http://gate.test/slack"},
]
SPEC_GATES = make_spec("2.0.0", webhooks=GATES)


def names(items: Sequence[MetricCheck | WebhookSpec]) -> list[str]:
    return [i.name for i in items]


# ------------------------------------------------------------------------- checks_due


def test_checks_are_due_one_interval_after_traffic_then_every_interval() -> None:
    status = rolling(1, ready=at(30))
    assert engine.checks_due(SPEC, status, at(89)) == []
    assert names(engine.checks_due(SPEC, status, at(90))) == ["error-rate"]

    ran = status.model_copy(update={"analysis": AnalysisStatus(runs=1, last_run_at=at(95))})
    assert engine.checks_due(SPEC, ran, at(154)) == []
    assert names(engine.checks_due(SPEC, ran, at(155))) == ["error-rate"]


def test_no_checks_before_traffic_while_paused_or_when_settled() -> None:
    waiting = rolling(0, ready=None)
    paused = rolling(1, phase=Phase.PAUSED, paused_by="spec", paused_at=T0)
    assert engine.checks_due(SPEC, waiting, at(minutes=5)) == []
    assert engine.checks_due(SPEC, paused, at(minutes=5)) == []
    assert engine.checks_due(SPEC, settled(), at(minutes=5)) == []


def test_checks_only_run_in_the_stages_they_name() -> None:
    spec = make_spec(
        "2.0.0",
        analysis={
            "interval": "1m",
            "metrics": [
                {"name": "error-rate", "template": "error-rate", "max": 0.01},
                {"name": "drift", "template": "prediction-psi", "max": 0.2, "stages": ["shadow"]},
                {"name": "p99", "template": "latency-p99", "max": 0.3, "stages": ["canary-25"]},
            ],
        },
    )
    assert names(engine.checks_due(spec, rolling(0), at(minutes=1))) == ["error-rate", "drift"]
    assert names(engine.checks_due(spec, rolling(1), at(minutes=1))) == ["error-rate"]
    assert names(engine.checks_due(spec, rolling(2), at(minutes=1))) == ["error-rate", "p99"]


def test_the_traffic_split_check_is_due_wherever_an_analysed_stage_sends_traffic() -> None:
    """Built in: last in every analysed stage with weight or mirror; not in a stage without
    checks (judged by time, maybe with no Prometheus at all); not when turned off; a check the
    user named traffic-split stands instead of it."""
    metrics = [
        {"name": "error-rate", "template": "error-rate", "max": 0.01, "stages": ["canary-5"]},
    ]
    spec = make_spec("2.0.0", analysis={"interval": "1m", "metrics": metrics, "trafficCheck": {}})
    assert names(engine.checks_due(spec, rolling(1), at(minutes=1))) == [
        "error-rate",
        "traffic-split",
    ]
    assert engine.checks_due(spec, rolling(0), at(minutes=1)) == []  # shadow: no checks here
    off = {"interval": "1m", "metrics": metrics, "trafficCheck": {"enabled": False}}
    assert names(
        engine.checks_due(make_spec("2.0.0", analysis=off), rolling(1), at(minutes=1))
    ) == ["error-rate"]
    own = [*metrics, {"name": "traffic-split", "template": "traffic-split", "stages": ["canary-5"]}]
    mine = make_spec("2.0.0", analysis={"interval": "1m", "metrics": own, "trafficCheck": {}})
    due = engine.checks_due(mine, rolling(1), at(minutes=1))
    assert names(due) == ["error-rate", "traffic-split"] and due[1].stages == ["canary-5"]


def test_a_zero_interval_is_not_always_due() -> None:
    spec = make_spec(
        "2.0.0", analysis={"interval": "0s", "metrics": [{"name": "e", "max": 1, "query": "up"}]}
    )
    ran = rolling(1, analysis=AnalysisStatus(runs=1, last_run_at=at(60)))
    assert engine.checks_due(spec, ran, at(60)) == []
    assert names(engine.checks_due(spec, ran, at(61))) == ["e"]


# -------------------------------------------------------------------------- gates_due


def test_pre_rollout_gates_are_due_once_the_candidate_is_ready() -> None:
    waiting = rolling(0, ready=None)
    assert engine.gates_due(SPEC_GATES, waiting, at(30)) == []
    ready = waiting.model_copy(
        update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": at(30)})}
    )
    assert names(engine.gates_due(SPEC_GATES, ready, at(31))) == ["smoke"]
    called = ready.model_copy(
        update={"stage": ready.stage.model_copy(update={"gates_checked_at": at(31)})}  # type: ignore[union-attr]
    )
    assert engine.gates_due(SPEC_GATES, called, at(40)) == []
    assert names(engine.gates_due(SPEC_GATES, called, at(41))) == ["smoke"]


def test_confirm_promotion_gates_are_due_when_the_stage_before_the_last_is_complete() -> None:
    passed = AnalysisStatus(runs=5, last_verdict=Verdict.SUCCESSFUL, last_run_at=at(minutes=20))
    before_last = rolling(2, analysis=passed)
    assert engine.gates_due(SPEC_GATES, before_last, at(minutes=19)) == []
    assert names(engine.gates_due(SPEC_GATES, before_last, at(minutes=20))) == ["approve"]
    inconclusive = before_last.model_copy(
        update={"analysis": passed.model_copy(update={"last_verdict": Verdict.INCONCLUSIVE})}
    )
    assert engine.gates_due(SPEC_GATES, inconclusive, at(minutes=20)) == []
    assert engine.gates_due(SPEC_GATES, rolling(1, analysis=passed), at(minutes=20)) == []
    paused = before_last.model_copy(update={"phase": Phase.PAUSED})
    assert engine.gates_due(SPEC_GATES, paused, at(minutes=20)) == []


def test_a_single_stage_rollout_asks_both_gates_before_traffic() -> None:
    spec = make_spec("2.0.0", webhooks=GATES, stages=[{"name": "full", "weight": 100}])
    status = rolling(0, ready=None).model_copy(
        update={
            "stage": stage(0, ready=None).model_copy(
                update={"name": "full", "weight": 100, "mirror": 0, "candidate_ready_at": T0}
            )
        }
    )
    assert names(engine.gates_due(spec, status, at(1))) == ["smoke", "approve"]


# ------------------------------------------------------------------ desired world


def test_desired_traffic_names_the_candidate_only_when_it_has_traffic() -> None:
    assert engine.desired_traffic(rolling(0, ready=None)) == SetTraffic("a", None, 0, 0)
    assert engine.desired_traffic(rolling(0)) == SetTraffic("a", "b", 0, 100)
    assert engine.desired_traffic(rolling(2)) == SetTraffic("a", "b", 25, 0)
    assert engine.desired_traffic(rolling(2, phase=Phase.ROLLED_BACK)) == SetTraffic(
        "a", None, 0, 0
    )
    assert engine.desired_traffic(settled(slot="b")) == SetTraffic("b", None, 0, 0)


def test_desired_slots() -> None:
    assert engine.desired_slots(SPEC, settled()) == [EnsureSlot("a", V1, 2)]
    assert [e.slot for e in engine.desired_slots(SPEC, rolling(1))] == ["a", "b"]
    assert [e.slot for e in engine.desired_slots(SPEC, rolling(1, phase=Phase.ROLLED_BACK))] == [
        "a"
    ]
    assert engine.desired_slots(SPEC, ModelRolloutStatus()) == []


# ------------------------------------------------------------------------- decide


def test_conditions_change_transition_time_only_when_they_flip() -> None:
    spec = make_spec("1.0.0")
    first = engine.decide(spec, settled(), observe(b=None), at(0))
    ready = next(c for c in first.status.conditions if c.type == "Ready")
    assert (ready.status, ready.last_transition_time) == ("True", at(0))

    later = engine.decide(spec, first.status, observe(b=None, generation=2), at(60))
    ready = next(c for c in later.status.conditions if c.type == "Ready")
    assert (ready.status, ready.last_transition_time, ready.observed_generation) == (
        "True",
        at(0),
        2,
    )
    assert later.status.observed_generation == 2

    drifted = engine.decide(spec, later.status, observe(b=None, weight=5, generation=2), at(120))
    ready = next(c for c in drifted.status.conditions if c.type == "Ready")
    stalled = next(c for c in drifted.status.conditions if c.type == "Stalled")
    assert (ready.status, ready.last_transition_time) == ("False", at(120))
    assert (stalled.status, stalled.last_transition_time) == ("False", at(0))


def test_requeue_is_the_next_thing_to_look_at() -> None:
    # 30 s before the stage ends, analysis last ran 50 s ago: the stage end comes first.
    status = rolling(
        1,
        analysis=AnalysisStatus(
            runs=9, last_run_at=at(minutes=9, seconds=20), last_verdict=Verdict.SUCCESSFUL
        ),
    )
    d = engine.decide(SPEC, status, observe(weight=5), at(minutes=9, seconds=30))
    assert (d.requeue_after, d.requeue_reason) == (timedelta(seconds=30), Wake.STAGE_END)
    # Analysis last ran at 8:40: the next run (9:40) comes before the stage's end (10:00).
    earlier = rolling(
        1,
        analysis=AnalysisStatus(
            runs=8, last_run_at=at(minutes=8, seconds=40), last_verdict=Verdict.SUCCESSFUL
        ),
    )
    d = engine.decide(SPEC, earlier, observe(weight=5), at(minutes=9, seconds=30))
    assert (d.requeue_after, d.requeue_reason) == (timedelta(seconds=10), Wake.ANALYSIS)
    # The route does not carry the stage's weight yet: look again soon, to see it converge.
    d = engine.decide(SPEC, status, observe(weight=0), at(minutes=9, seconds=30))
    assert (d.requeue_after, d.requeue_reason) == (timedelta(seconds=1), Wake.CONVERGE)
    # Paused: once per interval; settled and converged: nothing to look at.
    paused = rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=T0)
    d = engine.decide(SPEC, paused, observe(weight=5), at(60))
    assert (d.requeue_after, d.requeue_reason) == (timedelta(minutes=1), Wake.INTERVAL)
    d = engine.decide(make_spec("1.0.0"), settled(), observe(b=None), at(0))
    assert (d.requeue_after, d.requeue_reason) == (None, None)


def test_time_only_stages_promote_as_soon_as_the_last_stage_is_entered() -> None:
    spec = make_spec("2.0.0", analysis={"metrics": []})
    d = engine.decide(spec, rolling(2), observe(weight=25), at(minutes=20))
    assert d.status.phase is Phase.SUCCEEDED
    events = [e.event for e in d.status.history]
    assert events == ["StageEntered", "Promoted"]
    assert [a for a in d.actions if isinstance(a, SetTraffic)] == [
        SetTraffic("a", "b", 100, 0),
        SetTraffic("b", None, 0, 0),
    ]


def test_history_is_bounded_and_keeps_its_chain() -> None:
    history: list[HistoryEntry] = []
    for n in range(3):
        append(history, HistoryEntry(time=at(n), event="Old"), limit=3)
    status = settled(history=history)
    d = engine.decide(make_spec("2.0.0"), status, observe(b=None), at(60), history_limit=3)
    assert [e.seq for e in d.status.history] == [3, 4, 5]
    assert [e.event for e in d.status.history] == ["Old", "RolloutStarted", "StageEntered"]
    assert verify(d.status.history) == []


def test_history_entries_carry_model_and_stable_version() -> None:
    d = engine.decide(SPEC, settled(), observe(b=None), at(0))
    started = d.status.history[0]
    assert started.model is not None and started.model.version == "2.0.0"
    assert started.stable_version == "1.0.0" and started.time == at(0)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.decide(SPEC, settled(), observe(), datetime(2025, 1, 1))


def test_an_unparseable_spec_is_held_without_losing_state() -> None:
    status = rolling(1)
    held = engine.invalid_spec_status(status, ["spec.model: field required"], 3, at(60))
    assert held.stage == status.stage and held.phase is Phase.PROGRESSING
    assert held.observed_generation == 3
    assert held.message == "invalid spec: spec.model: field required"
    stalled = next(c for c in held.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "InvalidSpec")
    assert [e.event for e in held.history] == ["InvalidSpec"]
    again = engine.invalid_spec_status(held, ["spec.model: field required"], 3, at(90))
    assert again.history == held.history


def test_an_analysis_run_cannot_be_counted_twice() -> None:
    """The reconciler may hand the same results again (a retry after a failed status patch):
    only results for checks that are due count."""
    obs = observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)])
    first = engine.decide(SPEC, rolling(1), obs, at(minutes=1))
    second = engine.decide(SPEC, first.status, obs, at(minutes=1, seconds=5))
    assert first.status.analysis.inconclusive == second.status.analysis.inconclusive == 1
