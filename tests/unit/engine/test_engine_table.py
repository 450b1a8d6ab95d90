"""The engine as a table: (spec, status, observation, now) -> (phase, stage, actions, history).

Every case also runs a second time on its own output with the same observation and clock:
the status must not change, no entry or event may be added, and the only actions allowed are
convergent ones (the slots and the route that the state wants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from engine_world import (
    T0,
    V1,
    V2,
    V3,
    at,
    command,
    dump,
    effects,
    make_spec,
    new_events,
    observe,
    result,
    rolling,
    settled,
    stage,
)

from modelrollout import engine
from modelrollout.api.models import (
    AnalysisStatus,
    Condition,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    Verdict,
)
from modelrollout.audit import verify
from modelrollout.engine.timing import READY_POLL, READY_POLL_WATCHED
from modelrollout.engine.types import (
    Action,
    Decision,
    EmitEvent,
    EnsureSlot,
    GateResult,
    Notify,
    Observation,
    RouteShare,
    RouteState,
    ScaleSlot,
    SetTraffic,
    Slot,
)
from tests.unit.route_states import serving

SPEC = make_spec("2.0.0")
SLOTS: tuple[Slot, Slot] = ("a", "b")
SPEC_V1 = make_spec("1.0.0")
SPEC_V3 = make_spec("3.0.0")
PRE_GATE = [{"name": "smoke", "type": "pre-rollout", "url": "http://gate.test/smoke"}]
CONFIRM_GATE = [{"name": "approve", "type": "confirm-promotion", "url": "http://gate.test/ok"}]
SPEC_PRE = make_spec("2.0.0", webhooks=PRE_GATE)
SPEC_CONFIRM = make_spec("2.0.0", webhooks=CONFIRM_GATE)


def analysis_spec(**analysis: Any) -> ModelRolloutSpec:
    base: dict[str, Any] = {
        "interval": "1m",
        "metrics": [{"name": "error-rate", "template": "error-rate", "max": 0.01}],
    }
    base.update(analysis)
    return make_spec("2.0.0", analysis=base)


SPEC_FAIL2 = analysis_spec(failureLimit=2)
SPEC_ROLLBACK = analysis_spec(onInconclusive="Rollback")
SPEC_PRE_ROLLBACK = make_spec(
    "2.0.0", webhooks=PRE_GATE, analysis={"onInconclusive": "Rollback", "metrics": []}
)
SPEC_ONLY_25 = analysis_spec(
    metrics=[{"name": "error-rate", "template": "error-rate", "max": 0.01, "stages": ["canary-25"]}]
)

# The slots and routes used over and over.
ENSURE_A = EnsureSlot("a", V1, 2)
ENSURE_B = EnsureSlot("b", V2, 2)
TO_STABLE = SetTraffic("a", None, 0, 0)
SCALE_B_DOWN = ScaleSlot("b", 0)


def traffic(weight: int = 0, mirror: int = 0) -> SetTraffic:
    return SetTraffic("a", "b", weight, mirror)


def runs(**fields: Any) -> AnalysisStatus:
    return AnalysisStatus(**fields)


def passed(last_run: datetime) -> AnalysisStatus:
    return AnalysisStatus(
        runs=3,
        last_verdict=Verdict.SUCCESSFUL,
        last_run_at=last_run,
        results=[result(Verdict.SUCCESSFUL)],
    )


def initializing(**extra: Any) -> ModelRolloutStatus:
    fields: dict[str, Any] = {
        "phase": Phase.IDLE,
        "stable_slot": "a",
        "candidate": V1,
        "candidate_version": V1.version,
        "rollout_started_at": T0,
    }
    fields.update(extra)
    return ModelRolloutStatus(**fields)


def rolled_back(phase: Phase = Phase.ROLLED_BACK, **extra: Any) -> ModelRolloutStatus:
    return rolling(1, phase=phase, rollback_reason="analysis failed", **extra)


def stalled(reason: str, message: str) -> Condition:
    return Condition(type="Stalled", status="True", reason=reason, message=message)


@dataclass
class Case:
    id: str
    status: ModelRolloutStatus
    obs: Observation
    now: datetime
    phase: Phase
    stage: int | None
    actions: list[Action] | None  # workload and traffic actions, exactly; None: not checked
    history: list[str]
    spec: ModelRolloutSpec = field(default_factory=lambda: SPEC)
    check: Callable[[Decision], None] | None = None


def cond(d: Decision, type_: str) -> Condition:
    return next(c for c in d.status.conditions if c.type == type_)


def last_entry(d: Decision, event: str) -> Any:
    return next(e for e in reversed(d.status.history) if e.event == event)


def warnings(d: Decision) -> list[str]:
    return [a.reason for a in d.actions if isinstance(a, EmitEvent) and a.type == "Warning"]


# ------------------------------------------------------------------------------ checks


def is_ready_condition(value: str, reason: str) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        ready = cond(d, "Ready")
        assert (ready.status, ready.reason) == (value, reason)

    return check


def is_stalled(reason: str, *words: str) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        c = cond(d, "Stalled")
        assert (c.status, c.reason) == ("True", reason)
        for word in words:
            assert word in c.message

    return check


def not_stalled(d: Decision) -> None:
    assert cond(d, "Stalled").status == "False"


def corrected_once() -> ModelRolloutStatus:
    """Settled on 2.0.0 in slot b, after one correction of the route re-applied as written."""
    status = settled(V2, slot="b")
    spec = make_spec("2.0.0")
    obs = observe(a=None, b="2.0.0", stable="a", route_edited=True)
    return engine.decide(spec, status, obs, at(minutes=3)).status


def holds(predicate: Callable[[Decision], bool]) -> Callable[[Decision], None]:
    """A check from a predicate (the lambda's text is in the assertion message)."""

    def check(d: Decision) -> None:
        assert predicate(d)

    return check


def requeue(expected: timedelta | None) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        assert d.requeue_after == expected

    return check


def all_of(*checks: Callable[[Decision], None]) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        for c in checks:
            c(d)

    return check


def counters(**expected: Any) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        got = {k: getattr(d.status.analysis, k) for k in expected}
        assert got == expected

    return check


def rollback_reason(*words: str) -> Callable[[Decision], None]:
    def check(d: Decision) -> None:
        assert d.status.rollback_reason is not None
        for word in words:
            assert word in d.status.rollback_reason
        entry = last_entry(d, "RolledBack")
        assert all(word in entry.reason for word in words)

    return check


def gate_wait(d: Decision) -> None:
    assert d.status.stage is not None and d.status.stage.ready_at is None


# --------------------------------------------------------------------------- the table

CASES: list[Case] = [
    # ---------------------------------------------------------------- first version
    Case(
        "init: first tick deploys slot a; the route waits until its Deployment exists",
        ModelRolloutStatus(),
        observe(a=None, b=None, route=None),
        T0,
        Phase.IDLE,
        None,
        [EnsureSlot("a", V1, 2)],
        [],
        spec=SPEC_V1,
        check=all_of(is_ready_condition("False", "Initializing"), requeue(timedelta(seconds=1))),
    ),
    Case(
        "init: waiting for slot a",
        initializing(),
        observe(a="1.0.0", a_ready=0, b=None),
        at(30),
        Phase.IDLE,
        None,
        [EnsureSlot("a", V1, 2)],
        [],
        spec=SPEC_V1,
        check=holds(lambda d: cond(d, "Reconciling").reason == "Initializing"),
    ),
    Case(
        "init: slot a ready -> Succeeded",
        initializing(),
        observe(a="1.0.0", b=None),
        at(40),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("a", V1, 2)],
        ["Initialized"],
        spec=SPEC_V1,
        check=all_of(
            holds(
                lambda d: (
                    (d.status.stable, d.status.stable_version, d.status.candidate)
                    == (V1, "1.0.0", None)
                )
            ),
            is_ready_condition("True", "Succeeded"),
            requeue(None),
        ),
    ),
    Case(
        "init: deadline passed -> Failed, slot a kept",
        initializing(),
        observe(a="1.0.0", a_ready=0, b=None),
        at(minutes=10, seconds=1),
        Phase.FAILED,
        None,
        [EnsureSlot("a", V1, 2)],
        ["Failed"],
        spec=SPEC_V1,
        check=is_stalled("ProgressDeadlineExceeded"),
    ),
    Case(
        "init: failed, slot a finally ready -> Succeeded",
        initializing(phase=Phase.FAILED, rollback_reason="deadline"),
        observe(a="1.0.0", b=None),
        at(minutes=20),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("a", V1, 2)],
        ["Initialized"],
        spec=SPEC_V1,
    ),
    Case(
        "init: spec.model changed during initialisation -> restart with it",
        initializing(),
        observe(a="1.0.0", a_ready=0, b=None),
        at(30),
        Phase.IDLE,
        None,
        [EnsureSlot("a", V2, 2), TO_STABLE],
        [],
        spec=SPEC,
        check=holds(lambda d: d.status.rollout_started_at == at(30)),
    ),
    Case(
        "init: retry command after failed initialisation restarts the clock",
        initializing(phase=Phase.FAILED, rollback_reason="deadline"),
        observe(a="1.0.0", a_ready=0, b=None, command=command("retry")),
        at(minutes=20),
        Phase.IDLE,
        None,
        [EnsureSlot("a", V1, 2), TO_STABLE],
        ["Command"],
        spec=SPEC_V1,
    ),
    # ----------------------------------------------------------------------- settled
    Case(
        "settled: nothing to do",
        settled(),
        observe(b=None),
        T0,
        Phase.SUCCEEDED,
        None,
        [ENSURE_A],
        [],
        spec=SPEC_V1,
        check=all_of(is_ready_condition("True", "Succeeded"), not_stalled, requeue(None)),
    ),
    Case(
        "settled: route drifted -> re-set, Ready waits for the route",
        settled(),
        observe(b=None, weight=5),
        T0,
        Phase.SUCCEEDED,
        None,
        [ENSURE_A, TO_STABLE],
        [],
        spec=SPEC_V1,
        check=all_of(is_ready_condition("False", "RouteConverging"), requeue(timedelta(seconds=1))),
    ),
    Case(
        "settled: route unknown -> asserted",
        settled(),
        observe(b=None, route=None),
        T0,
        Phase.SUCCEEDED,
        None,
        [ENSURE_A, TO_STABLE],
        [],
        spec=SPEC_V1,
    ),
    Case(
        "settled: replicas edited -> slot updated, no rollout",
        settled(),
        observe(b=None),
        T0,
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("a", V1, 5)],
        [],
        spec=make_spec("1.0.0", replicas=5),
    ),
    Case(
        "settled: stages and analysis edited -> no rollout",
        settled(),
        observe(b=None),
        T0,
        Phase.SUCCEEDED,
        None,
        [ENSURE_A],
        [],
        spec=make_spec(
            "1.0.0", stages=[{"name": "full", "weight": 100}], analysis={"interval": "5m"}
        ),
    ),
    Case(
        "settled: a retired slot still has replicas -> scaled down",
        settled(),
        observe(b="0.9.0"),
        T0,
        Phase.SUCCEEDED,
        None,
        [ENSURE_A, ScaleSlot("b", 0)],
        [],
        spec=SPEC_V1,
    ),
    Case(
        "settled: new version -> rollout starts in the other slot",
        settled(),
        observe(b=None),
        T0,
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        ["RolloutStarted", "StageEntered"],
        check=all_of(
            holds(lambda d: d.status.rollout_started_at == T0),
            holds(lambda d: cond(d, "Reconciling").reason == "StageShadow"),
        ),
    ),
    Case(
        "settled: new digest of the same version is a new rollout",
        settled(stable=V2),
        observe(a="2.0.0", b=None),
        T0,
        Phase.PROGRESSING,
        0,
        None,
        ["RolloutStarted", "StageEntered"],
        spec=make_spec(
            "2.0.0",
            model={
                "name": "fraud",
                "version": "2.0.0",
                "uri": "s3://models/fraud/2.0.0",
                "digest": "sha256:" + "ab" * 32,
            },
        ),
    ),
    Case(
        "settled: stable in slot b -> candidate goes to slot a",
        settled(slot="b"),
        observe(a=None, b="1.0.0", stable="b"),
        T0,
        Phase.PROGRESSING,
        0,
        [EnsureSlot("b", V1, 2), EnsureSlot("a", V2, 2)],
        ["RolloutStarted", "StageEntered"],
    ),
    Case(
        "settled: new version while spec.paused -> deployed but paused at once",
        settled(),
        observe(b=None),
        T0,
        Phase.PAUSED,
        0,
        [ENSURE_A, ENSURE_B],
        ["RolloutStarted", "StageEntered", "Paused"],
        spec=make_spec("2.0.0", paused=True),
    ),
    Case(
        "settled: new version whose slot is already up -> stage 0 traffic in the same tick",
        settled(),
        observe(),
        T0,
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B, traffic(mirror=100)],
        ["RolloutStarted", "StageEntered", "CandidateReady"],
    ),
    # -------------------------------------------------------- waiting for readiness
    Case(
        "readiness: candidate not ready yet",
        rolling(0, ready=None),
        observe(b_ready=0),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        check=requeue(READY_POLL),  # nothing else tells the operator: poll
    ),
    Case(
        "readiness: candidate not ready yet, its Deployments watched",
        rolling(0, ready=None),
        observe(b_ready=0, slots_watched=True),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        # a change of the Deployment wakes the rollout; the poll only covers a lost wake-up
        check=requeue(READY_POLL_WATCHED),
    ),
    Case(
        "readiness: slot ready but with another version",
        rolling(0, ready=None),
        observe(b="1.5.0"),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "readiness: partly ready is not ready",
        rolling(0, ready=None),
        observe(b_ready=1),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "readiness: ready, no gates -> stage 0 traffic (mirror)",
        rolling(0, ready=None),
        observe(),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B, traffic(mirror=100)],
        ["CandidateReady"],
        check=holds(lambda d: d.status.stage.ready_at == at(30)),  # type: ignore[union-attr]
    ),
    Case(
        "readiness: deadline exactly now -> still waiting",
        rolling(0, ready=None),
        observe(b_ready=0),
        at(minutes=10),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "readiness: deadline passed -> Failed, stable 100% first, candidate down",
        rolling(0, ready=None),
        observe(b_ready=0),
        at(minutes=10, seconds=1),
        Phase.FAILED,
        0,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        check=all_of(
            is_stalled("ProgressDeadlineExceeded"),
            rollback_reason("progressDeadline 10m"),
            holds(lambda d: warnings(d) == ["ProgressDeadlineExceeded"]),
        ),
    ),
    # ------------------------------------------------------------------------ gates
    Case(
        "gates: candidate just ready -> remember it, gates are called next tick",
        rolling(0, ready=None),
        observe(),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_PRE,
        check=all_of(
            gate_wait,
            holds(lambda d: d.status.stage.candidate_ready_at == at(30)),  # type: ignore[union-attr]
            requeue(timedelta(seconds=1)),
        ),
    ),
    Case(
        "gates: pre-rollout Open -> stage 0 traffic",
        rolling(0, ready=None).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(gates={"smoke": GateResult.OPEN}),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B, traffic(mirror=100)],
        ["CandidateReady"],
        spec=SPEC_PRE,
    ),
    Case(
        "gates: pre-rollout Closed -> keep waiting, call again later",
        rolling(0, ready=None).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(gates={"smoke": GateResult.CLOSED}),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_PRE,
        check=all_of(
            gate_wait,
            holds(lambda d: d.status.stage.gates_checked_at == at(31)),  # type: ignore[union-attr]
            requeue(timedelta(seconds=10)),
            holds(lambda d: "smoke" in d.status.message),
        ),
    ),
    Case(
        "gates: no answer reported -> waiting, nothing counted",
        rolling(0, ready=None).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_PRE,
        check=all_of(gate_wait, counters(inconclusive=0)),
    ),
    Case(
        "gates: an answer to a call that was not due is ignored",
        rolling(0, ready=None).model_copy(
            update={
                "stage": stage(0, ready=None).model_copy(
                    update={"candidate_ready_at": T0, "gates_checked_at": at(25)}
                )
            }
        ),
        observe(gates={"smoke": GateResult.OPEN}),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_PRE,
        check=gate_wait,
    ),
    Case(
        "gates: timeout counts as inconclusive",
        rolling(0, ready=None).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(gates={"smoke": GateResult.TIMEOUT}),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_PRE,
        check=all_of(gate_wait, counters(inconclusive=1), not_stalled),
    ),
    Case(
        "gates: timeouts past inconclusiveLimit with Hold -> Stalled",
        rolling(0, ready=None, analysis=runs(inconclusive=3)).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(gates={"smoke": GateResult.TIMEOUT}),
        at(31),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        ["AnalysisHold"],
        spec=SPEC_PRE,
        check=all_of(gate_wait, counters(inconclusive=4), is_stalled("GateTimeout", "smoke")),
    ),
    Case(
        "gates: timeouts past inconclusiveLimit with Rollback -> RolledBack",
        rolling(0, ready=None, analysis=runs(inconclusive=3)).model_copy(
            update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
        ),
        observe(gates={"smoke": GateResult.TIMEOUT}),
        at(31),
        Phase.ROLLED_BACK,
        0,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=SPEC_PRE_ROLLBACK,
        check=all_of(is_stalled("GateTimeout"), rollback_reason("smoke", "timed out")),
    ),
    Case(
        "gates: confirm-promotion Closed -> no last stage yet",
        rolling(2, analysis=passed(at(minutes=20))),
        observe(weight=25, gates={"approve": GateResult.CLOSED}),
        at(minutes=20, seconds=30),
        Phase.PROGRESSING,
        2,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_CONFIRM,
        check=holds(lambda d: "confirm-promotion gates: approve" in d.status.message),
    ),
    Case(
        "gates: confirm-promotion not called yet -> wait",
        rolling(2, analysis=passed(at(minutes=20))),
        observe(weight=25),
        at(minutes=20, seconds=30),
        Phase.PROGRESSING,
        2,
        [ENSURE_A, ENSURE_B],
        [],
        spec=SPEC_CONFIRM,
    ),
    Case(
        "gates: confirm-promotion Open -> last stage",
        rolling(2, analysis=passed(at(minutes=20))),
        observe(weight=25, gates={"approve": GateResult.OPEN}),
        at(minutes=20, seconds=30),
        Phase.PROGRESSING,
        3,
        [ENSURE_A, ENSURE_B, traffic(100)],
        ["StageEntered"],
        spec=SPEC_CONFIRM,
    ),
    Case(
        "gates: pre-rollout gates are not asked before stage 1",
        rolling(0, analysis=passed(at(minutes=10))),
        observe(mirror=100),
        at(minutes=10, seconds=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B, traffic(5)],
        ["StageEntered"],
        spec=SPEC_PRE,
    ),
    # --------------------------------------------------------------------- analysis
    Case(
        "analysis: Successful, duration not over -> stay",
        rolling(1),
        observe(weight=5, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(
            counters(runs=1, last_verdict=Verdict.SUCCESSFUL, last_run_at=at(minutes=1)),
            requeue(timedelta(minutes=1)),
        ),
    ),
    Case(
        "analysis: results before the check is due are ignored",
        rolling(1),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.5)]),
        at(30),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=counters(runs=0, failures=0),
    ),
    Case(
        "analysis: Failed with failureLimit 0 -> rollback naming metric, value and bound",
        rolling(1),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]),
        at(minutes=1),
        Phase.ROLLED_BACK,
        1,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        check=all_of(
            rollback_reason("error-rate = 0.05", "<= 0.01"),
            is_stalled("AnalysisFailed"),
            holds(lambda d: last_entry(d, "RolledBack").metrics[0].value == 0.05),
        ),
    ),
    Case(
        "analysis: Failed with failureLimit 2, first failure -> recorded, stay",
        rolling(1),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["AnalysisFailed"],
        spec=SPEC_FAIL2,
        check=counters(failures=1),
    ),
    Case(
        "analysis: Failed with failureLimit 2, second failure -> stay",
        rolling(1, analysis=runs(failures=1, runs=1, last_run_at=T0)),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["AnalysisFailed"],
        spec=SPEC_FAIL2,
        check=counters(failures=2),
    ),
    Case(
        "analysis: Failed with failureLimit 2, third failure -> rollback",
        rolling(1, analysis=runs(failures=2, runs=2, last_run_at=T0)),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.05)]),
        at(minutes=1),
        Phase.ROLLED_BACK,
        1,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=SPEC_FAIL2,
        check=rollback_reason("error-rate", "failureLimit 2"),
    ),
    Case(
        "analysis: Inconclusive under the limit -> counted, stay",
        rolling(1, analysis=runs(inconclusive=2)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(counters(inconclusive=3), not_stalled),
    ),
    Case(
        "analysis: Inconclusive past the limit, Hold -> Stalled, warned once",
        rolling(1, analysis=runs(inconclusive=3)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["AnalysisHold"],
        check=all_of(
            counters(inconclusive=4),
            is_stalled("AnalysisInconclusive"),
            holds(lambda d: warnings(d) == ["AnalysisInconclusive"]),
        ),
    ),
    Case(
        "analysis: still Inconclusive while held -> no second warning",
        rolling(1, analysis=runs(inconclusive=4)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(
            counters(inconclusive=5),
            is_stalled("AnalysisInconclusive"),
            holds(lambda d: warnings(d) == []),
        ),
    ),
    Case(
        "analysis: held and the duration is over -> still no advance",
        rolling(1, analysis=runs(inconclusive=4, runs=5, last_verdict=Verdict.INCONCLUSIVE)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=15),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "analysis: Successful run releases the hold",
        rolling(1, analysis=runs(inconclusive=4, errors=0)),
        observe(weight=5, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(counters(inconclusive=0), not_stalled),
    ),
    Case(
        "analysis: Inconclusive past the limit, Rollback policy -> rollback",
        rolling(1, analysis=runs(inconclusive=3)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.ROLLED_BACK,
        1,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=SPEC_ROLLBACK,
        check=all_of(is_stalled("AnalysisInconclusive"), rollback_reason("inconclusive")),
    ),
    Case(
        "analysis: a due check with no result is Inconclusive",
        rolling(1),
        observe(weight=5, analysis=[]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(
            counters(inconclusive=1, runs=1, last_verdict=Verdict.INCONCLUSIVE),
            holds(lambda d: d.status.analysis.results[0].name == "error-rate"),
        ),
    ),
    Case(
        "analysis: Error under errorLimit -> counted",
        rolling(1, analysis=runs(errors=4)),
        observe(weight=5, analysis=[result(Verdict.ERROR, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(counters(errors=5, inconclusive=0), not_stalled),
    ),
    Case(
        "analysis: Error past errorLimit, Hold -> Stalled",
        rolling(1, analysis=runs(errors=5)),
        observe(weight=5, analysis=[result(Verdict.ERROR, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["AnalysisHold"],
        check=all_of(counters(errors=6), is_stalled("AnalysisError")),
    ),
    Case(
        "analysis: Error past errorLimit, Rollback policy -> rollback",
        rolling(1, analysis=runs(errors=5)),
        observe(weight=5, analysis=[result(Verdict.ERROR, None)]),
        at(minutes=1),
        Phase.ROLLED_BACK,
        1,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=SPEC_ROLLBACK,
        check=is_stalled("AnalysisError"),
    ),
    Case(
        "analysis: a run without errors resets the error streak",
        rolling(1, analysis=runs(errors=3)),
        observe(weight=5, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=counters(errors=0, inconclusive=1),
    ),
    # ------------------------------------------------------------ duration and advance
    Case(
        "advance: duration over and last run Successful -> next stage",
        rolling(1, analysis=passed(at(minutes=9))),
        observe(weight=5, analysis=[result(Verdict.SUCCESSFUL, 0.002)]),
        at(minutes=10),
        Phase.PROGRESSING,
        2,
        [ENSURE_A, ENSURE_B, traffic(25)],
        ["StageEntered"],
        check=all_of(
            holds(
                lambda d: (
                    (
                        last_entry(d, "StageEntered").from_stage,
                        last_entry(d, "StageEntered").to_stage,
                    )
                    == ("canary-5", "canary-25")
                )
            ),
            holds(lambda d: last_entry(d, "StageEntered").metrics[0].value == 0.002),
            counters(runs=0, failures=0, last_run_at=None),
        ),
    ),
    Case(
        "advance: duration over, no run yet -> wait for one",
        rolling(1),
        observe(weight=5),
        at(minutes=10),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "advance: duration over, last run Inconclusive -> wait",
        rolling(
            1,
            analysis=runs(
                runs=9,
                last_verdict=Verdict.INCONCLUSIVE,
                inconclusive=1,
                last_run_at=at(minutes=9, seconds=30),
            ),
        ),
        observe(weight=5),
        at(minutes=10),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=holds(lambda d: "successful analysis" in d.status.message),
    ),
    Case(
        "advance: duration over, one earlier failure tolerated, last run Successful -> next",
        rolling(1, analysis=passed(at(minutes=9)).model_copy(update={"failures": 1})),
        observe(weight=5, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=10),
        Phase.PROGRESSING,
        2,
        None,
        ["StageEntered"],
        spec=SPEC_FAIL2,
    ),
    Case(
        "advance: no check applies to the stage -> time alone",
        rolling(1),
        observe(weight=5),
        at(minutes=10),
        Phase.PROGRESSING,
        2,
        [ENSURE_A, ENSURE_B, traffic(25)],
        ["StageEntered"],
        spec=SPEC_ONLY_25,
    ),
    Case(
        "advance: duration not over -> stay, requeue at most the interval",
        rolling(1, analysis=passed(at(minutes=4, seconds=30))),
        observe(weight=5),
        at(minutes=5),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=requeue(timedelta(seconds=30)),
    ),
    Case(
        "advance: candidate partly ready -> keeps its traffic, does not advance",
        rolling(1, analysis=passed(at(minutes=9))),
        observe(weight=5, b_ready=1, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=10),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "advance: candidate lost every ready replica -> traffic back, wait again",
        rolling(1),
        observe(weight=5, b_ready=0),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [TO_STABLE, ENSURE_A, ENSURE_B],
        ["CandidateUnready"],
        check=holds(lambda d: d.status.stage.ready_at is None),  # type: ignore[union-attr]
    ),
    # -------------------------------------------------------------------- last stage
    Case(
        "last stage: analysis passes -> promote by switching roles",
        rolling(3),
        observe(weight=100, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=1),
        Phase.SUCCEEDED,
        None,
        [SetTraffic("b", None, 0, 0), ScaleSlot("a", 0), ENSURE_B],
        ["Promoted"],
        check=all_of(
            holds(
                lambda d: (
                    (d.status.stable_slot, d.status.stable, d.status.candidate) == ("b", V2, None)
                )
            ),
            holds(lambda d: last_entry(d, "Promoted").metrics[0].verdict is Verdict.SUCCESSFUL),
            # the full stage's route already sends slot b 100%: Ready at once, nothing to await
            is_ready_condition("True", "Succeeded"),
            requeue(None),
        ),
    ),
    Case(
        "last stage: Inconclusive -> never promote",
        rolling(3),
        observe(weight=100, analysis=[result(Verdict.INCONCLUSIVE, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        3,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "last stage: Error -> never promote",
        rolling(3),
        observe(weight=100, analysis=[result(Verdict.ERROR, None)]),
        at(minutes=1),
        Phase.PROGRESSING,
        3,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "last stage: no analysis yet -> never promote",
        rolling(3),
        observe(weight=100),
        at(minutes=5),
        Phase.PROGRESSING,
        3,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "last stage: with a duration, analysis passed early -> wait for the duration",
        rolling(3),
        observe(weight=100, analysis=[result(Verdict.SUCCESSFUL)]),
        at(minutes=1),
        Phase.PROGRESSING,
        3,
        [ENSURE_A, ENSURE_B],
        [],
        spec=make_spec(
            "2.0.0",
            stages=[
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "canary-5", "weight": 5, "duration": "10m"},
                {"name": "canary-25", "weight": 25, "duration": "20m"},
                {"name": "full", "weight": 100, "duration": "5m"},
            ],
        ),
    ),
    # ---------------------------------------------------------- commands, progressing
    Case(
        "command: pause -> Paused by command",
        rolling(1),
        observe(weight=5, command=command("pause")),
        at(minutes=2),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command", "Paused"],
        check=all_of(
            holds(
                lambda d: (
                    (d.status.paused_by, d.status.paused_at, d.status.last_command)
                    == ("command", at(minutes=2), "c1")
                )
            ),
            holds(lambda d: last_entry(d, "Command").actor == "alice"),
        ),
    ),
    Case(
        "command: the same id again -> nothing",
        rolling(1, last_command="c1"),
        observe(weight=5, command=command("pause")),
        at(minutes=2),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "command: resume while not paused -> ignored with a reason",
        rolling(1),
        observe(weight=5, command=command("resume")),
        at(minutes=2),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
        check=holds(lambda d: "ignored: not paused" in last_entry(d, "Command").reason),
    ),
    Case(
        "command: retry while progressing -> ignored",
        rolling(1),
        observe(weight=5, command=command("retry")),
        at(minutes=2),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
    ),
    Case(
        "command: promote -> promoted now, skipping stages, recorded with actor",
        rolling(1),
        observe(weight=5, command=command("promote", actor="bob")),
        at(minutes=2),
        Phase.SUCCEEDED,
        None,
        [SetTraffic("b", None, 0, 0), ScaleSlot("a", 0), ENSURE_B],
        ["Command", "Promoted"],
        check=holds(lambda d: last_entry(d, "Promoted").actor == "bob"),
    ),
    Case(
        "command: promote while the candidate is not ready -> ignored",
        rolling(0, ready=None),
        observe(b_ready=0, command=command("promote")),
        at(minutes=2),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        ["Command"],
        check=holds(lambda d: "not ready" in last_entry(d, "Command").reason),
    ),
    Case(
        "command: abort -> rolled back, reason names the actor",
        rolling(2),
        observe(weight=25, command=command("abort", actor="carol")),
        at(minutes=2),
        Phase.ROLLED_BACK,
        2,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["Command", "RolledBack"],
        check=all_of(rollback_reason("aborted by carol"), is_stalled("Aborted")),
    ),
    # ---------------------------------------------------------------------- paused
    Case(
        "paused: frozen, no analysis, no advance even past the duration",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, analysis=[result(Verdict.FAILED, 0.9)]),
        at(minutes=30),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=all_of(
            counters(runs=0, failures=0),
            holds(lambda d: cond(d, "Reconciling").reason == "Paused"),
        ),
    ),
    Case(
        "paused: no deadline while waiting for readiness",
        rolling(0, ready=None, phase=Phase.PAUSED, paused_by="command", paused_at=at(60)),
        observe(b_ready=0),
        at(minutes=30),
        Phase.PAUSED,
        0,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "paused: resume command -> stage clock shifted by the paused time",
        rolling(
            1,
            phase=Phase.PAUSED,
            paused_by="command",
            paused_at=at(minutes=2),
            analysis=runs(runs=2, last_run_at=at(minutes=2), last_verdict=Verdict.SUCCESSFUL),
        ),
        observe(weight=5, command=command("resume")),
        at(minutes=7),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command", "Resumed"],
        check=all_of(
            holds(lambda d: d.status.stage.ready_at == at(minutes=5)),  # type: ignore[union-attr]
            counters(last_run_at=at(minutes=7)),
            holds(lambda d: (d.status.paused_at, d.status.paused_by) == (None, None)),
        ),
    ),
    Case(
        "paused: resume command while spec.paused -> ignored",
        rolling(1, phase=Phase.PAUSED, paused_by="spec", paused_at=at(minutes=2)),
        observe(weight=5, command=command("resume")),
        at(minutes=7),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
        spec=make_spec("2.0.0", paused=True),
        check=holds(lambda d: "spec.paused" in last_entry(d, "Command").reason),
    ),
    Case(
        "paused: resume command while spec.paused also true -> spec keeps it paused",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, command=command("resume")),
        at(minutes=7),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
        spec=make_spec("2.0.0", paused=True),
        check=holds(lambda d: d.status.paused_by == "spec"),
    ),
    Case(
        "paused: spec.paused false does not end a command pause",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5),
        at(minutes=7),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        [],
    ),
    Case(
        "paused: spec.paused set -> Paused by spec",
        rolling(1),
        observe(weight=5),
        at(minutes=3),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Paused"],
        spec=make_spec("2.0.0", paused=True),
        check=holds(lambda d: d.status.paused_by == "spec"),
    ),
    Case(
        "paused: spec.paused cleared -> resumed, clock shifted",
        rolling(1, phase=Phase.PAUSED, paused_by="spec", paused_at=at(minutes=3)),
        observe(weight=5),
        at(minutes=13),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        ["Resumed"],
        check=holds(lambda d: d.status.stage.ready_at == at(minutes=10)),  # type: ignore[union-attr]
    ),
    Case(
        "paused: pause command again -> ignored",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, command=command("pause", "c2")),
        at(minutes=3),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
    ),
    Case(
        "paused: abort -> rolled back",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, command=command("abort")),
        at(minutes=3),
        Phase.ROLLED_BACK,
        1,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["Command", "RolledBack"],
        check=holds(lambda d: (d.status.paused_by, d.status.paused_at) == (None, None)),
    ),
    Case(
        "paused: promote -> promoted",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, command=command("promote")),
        at(minutes=3),
        Phase.SUCCEEDED,
        None,
        [SetTraffic("b", None, 0, 0), ScaleSlot("a", 0), ENSURE_B],
        ["Command", "Promoted"],
    ),
    Case(
        "paused: retry -> ignored",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, command=command("retry")),
        at(minutes=3),
        Phase.PAUSED,
        1,
        [ENSURE_A, ENSURE_B],
        ["Command"],
    ),
    Case(
        "paused: candidate with traffic lost every replica -> traffic back even when paused",
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5, b_ready=0),
        at(minutes=3),
        Phase.PAUSED,
        1,
        [TO_STABLE, ENSURE_A, ENSURE_B],
        ["CandidateUnready"],
    ),
    # ------------------------------------------------------ supersede and revert
    Case(
        "supersede: new version mid-stage -> stable first, slot redeployed, stage 0",
        rolling(2),
        observe(weight=25),
        at(minutes=5),
        Phase.PROGRESSING,
        0,
        [TO_STABLE, EnsureSlot("b", V3, 2), ENSURE_A],
        ["Superseded", "StageEntered"],
        spec=SPEC_V3,
        check=all_of(
            holds(
                lambda d: (d.status.candidate, d.status.rollout_started_at) == (V3, at(minutes=5))
            ),
            holds(lambda d: "2.0.0 superseded by 3.0.0" in last_entry(d, "Superseded").reason),
        ),
    ),
    Case(
        "supersede: while paused by command -> stays paused at stage 0",
        rolling(2, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=25),
        at(minutes=5),
        Phase.PAUSED,
        0,
        [TO_STABLE, EnsureSlot("b", V3, 2), ENSURE_A],
        ["Superseded", "StageEntered"],
        spec=SPEC_V3,
        check=holds(lambda d: (d.status.paused_by, d.status.candidate) == ("command", V3)),
    ),
    Case(
        "supersede: while waiting for readiness",
        rolling(0, ready=None),
        observe(b_ready=0),
        at(minutes=5),
        Phase.PROGRESSING,
        0,
        [TO_STABLE, EnsureSlot("b", V3, 2), ENSURE_A],
        ["Superseded", "StageEntered"],
        spec=SPEC_V3,
    ),
    Case(
        "revert: spec.model back to stable mid-rollout -> Succeeded on stable",
        rolling(2),
        observe(weight=25),
        at(minutes=5),
        Phase.SUCCEEDED,
        None,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=SPEC_V1,
        check=all_of(
            holds(
                lambda d: "spec reverted to stable version" in last_entry(d, "RolledBack").reason
            ),
            holds(lambda d: (d.status.candidate, d.status.stable) == (None, V1)),
        ),
    ),
    Case(
        "revert: while paused",
        rolling(2, phase=Phase.PAUSED, paused_by="spec", paused_at=at(minutes=2)),
        observe(weight=25),
        at(minutes=5),
        Phase.SUCCEEDED,
        None,
        [TO_STABLE, SCALE_B_DOWN, ENSURE_A],
        ["RolledBack"],
        spec=make_spec("1.0.0", paused=True),
    ),
    # ------------------------------------------------------------ rolled back, failed
    Case(
        "rolled back: terminal while spec.model is the failed candidate",
        rolled_back(),
        observe(b_ready=0, b="2.0.0"),
        at(minutes=30),
        Phase.ROLLED_BACK,
        1,
        [ENSURE_A, SCALE_B_DOWN],
        [],
        check=all_of(requeue(None), is_stalled("RolledBack")),
    ),
    Case(
        "rolled back: candidate already scaled down -> only the stable is asserted",
        rolled_back(),
        observe(b=None),
        at(minutes=30),
        Phase.ROLLED_BACK,
        1,
        [ENSURE_A],
        [],
    ),
    Case(
        "rolled back: retry -> same candidate from stage 0",
        rolled_back(),
        observe(b=None, command=command("retry", actor="dave")),
        at(minutes=30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        ["Command", "RolloutStarted", "StageEntered"],
        check=all_of(
            holds(lambda d: d.status.rollback_reason is None),
            holds(lambda d: last_entry(d, "RolloutStarted").actor == "dave"),
            not_stalled,
        ),
    ),
    Case(
        "rolled back: new version -> new rollout",
        rolled_back(),
        observe(b=None),
        at(minutes=30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, EnsureSlot("b", V3, 2)],
        ["RolloutStarted", "StageEntered"],
        spec=SPEC_V3,
    ),
    Case(
        "rolled back: retry after spec.model changed -> ignored, new rollout anyway",
        rolled_back(),
        observe(b=None, command=command("retry")),
        at(minutes=30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, EnsureSlot("b", V3, 2)],
        ["Command", "RolloutStarted", "StageEntered"],
        spec=SPEC_V3,
    ),
    Case(
        "rolled back: spec.model set back to stable -> Succeeded",
        rolled_back(),
        observe(b=None),
        at(minutes=30),
        Phase.SUCCEEDED,
        None,
        [ENSURE_A],
        ["Reverted"],
        spec=SPEC_V1,
        check=is_ready_condition("True", "Succeeded"),
    ),
    Case(
        "failed: retry after the deadline -> stage 0 again",
        rolled_back(Phase.FAILED),
        observe(b=None, command=command("retry")),
        at(minutes=30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B],
        ["Command", "RolloutStarted", "StageEntered"],
    ),
    Case(
        "failed: terminal, the Stalled reason survives",
        rolled_back(Phase.FAILED, conditions=[stalled("ProgressDeadlineExceeded", "late")]),
        observe(b=None),
        at(minutes=30),
        Phase.FAILED,
        1,
        [ENSURE_A],
        [],
        check=is_stalled("ProgressDeadlineExceeded"),
    ),
    # ------------------------------------------------------------------------ holds
    Case(
        "hold: invalid spec -> no workload or traffic action, Stalled, warned",
        rolling(1),
        observe(weight=0, validation_errors=["spec.stages[1]: weight must increase"]),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [],
        ["InvalidSpec"],
        check=all_of(
            is_stalled("InvalidSpec", "weight must increase"),
            is_ready_condition("False", "InvalidSpec"),
            holds(lambda d: warnings(d) == ["InvalidSpec"]),
            requeue(timedelta(seconds=30)),
        ),
    ),
    Case(
        "hold: invalid spec, same message as before -> no new warning",
        rolling(
            1,
            conditions=[
                stalled("InvalidSpec", "invalid spec: spec.stages[1]: weight must increase")
            ],
        ),
        observe(weight=5, validation_errors=["spec.stages[1]: weight must increase"]),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [],
        [],
        check=holds(lambda d: warnings(d) == []),
    ),
    Case(
        "hold: invalid spec keeps a command for later",
        rolling(1),
        observe(weight=5, validation_errors=["bad"], command=command("abort")),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [],
        ["InvalidSpec"],
        check=holds(lambda d: d.status.last_command is None),
    ),
    Case(
        "hold: routing error -> no action, Stalled RoutingError",
        rolling(1),
        observe(weight=5, routing_error="HTTPRoute ml/fraud not found"),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [],
        ["RoutingError"],
        check=is_stalled("RoutingError", "HTTPRoute ml/fraud not found"),
    ),
    Case(
        "hold: spec fixed -> resumes where it was",
        rolling(1, conditions=[stalled("InvalidSpec", "invalid spec: bad")]),
        observe(weight=5),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B],
        [],
        check=not_stalled,
    ),
    # ------------------------------------------------------------------ route drift
    Case(
        "drift: route edited by hand mid-stage -> re-set, no history",
        rolling(1),
        observe(weight=0),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B, traffic(5)],
        [],
        check=requeue(timedelta(seconds=1)),
    ),
    Case(
        "drift: settled in slot b, route re-applied as first written (all to slot a) -> "
        "put back, recorded with before and after, Warning Event",
        settled(V2, slot="b"),
        observe(a=None, b="2.0.0", stable="a", route_edited=True),
        at(minutes=3),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("b", V2, 2), SetTraffic("b", None, 0, 0)],
        ["RouteCorrected"],
        spec=make_spec("2.0.0"),
        check=all_of(
            holds(lambda d: "m-a 100%" in last_entry(d, "RouteCorrected").reason),
            holds(lambda d: "restored to slot b 100%" in last_entry(d, "RouteCorrected").reason),
            holds(lambda d: "RouteCorrected" in warnings(d)),
            is_ready_condition("False", "RouteConverging"),
            requeue(timedelta(seconds=1)),
        ),
    ),
    Case(
        "drift: the same misroute found again -> put back, neither a second entry nor Event",
        corrected_once(),
        observe(a=None, b="2.0.0", stable="a", route_edited=True),
        at(minutes=4),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("b", V2, 2), SetTraffic("b", None, 0, 0)],
        [],
        spec=make_spec("2.0.0"),
        check=holds(lambda d: "RouteCorrected" not in warnings(d)),
    ),
    Case(
        "drift: numbers right, Service wrong (slot a at 100% while b is stable) -> not agreed "
        "even unedited: put back without a report",
        settled(V2, slot="b"),
        observe(a=None, b="2.0.0", stable="a"),
        at(minutes=3),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("b", V2, 2), SetTraffic("b", None, 0, 0)],
        [],
        spec=make_spec("2.0.0"),
    ),
    Case(
        "drift: route written with the role Service m-stable -> rewritten to the slot, no "
        "misroute reported (its traffic reached the stable pods)",
        settled(V2, slot="b"),
        observe(
            a=None,
            b="2.0.0",
            route=RouteState(True, (RouteShare("m-stable", None, 100, "stable"),)),
            route_edited=True,
        ),
        at(minutes=3),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("b", V2, 2), SetTraffic("b", None, 0, 0)],
        [],
        spec=make_spec("2.0.0"),
    ),
    Case(
        "drift: route written but its Gateway has not accepted it -> not in force: wait, "
        "nothing rewritten, not Ready",
        settled(V2, slot="b"),
        observe(
            a=None,
            b="2.0.0",
            route=replace(serving(stable="b"), pending="parent Gateway/gw accepted generation 3"),
        ),
        at(minutes=3),
        Phase.SUCCEEDED,
        None,
        [EnsureSlot("b", V2, 2), SetTraffic("b", None, 0, 0)],
        [],
        spec=make_spec("2.0.0"),
        check=all_of(is_ready_condition("False", "RouteConverging"), requeue(timedelta(seconds=1))),
    ),
    Case(
        "drift: route unknown while waiting for readiness -> asserted stable",
        rolling(0, ready=None),
        observe(b_ready=0, route=None),
        at(30),
        Phase.PROGRESSING,
        0,
        [ENSURE_A, ENSURE_B, TO_STABLE],
        [],
    ),
    Case(
        "drift: rolled back but the route still sends traffic to the candidate",
        rolled_back(),
        observe(b=None, weight=5),
        at(minutes=30),
        Phase.ROLLED_BACK,
        1,
        [ENSURE_A, TO_STABLE],
        [],
        check=requeue(timedelta(seconds=1)),
    ),
    # ---------------------------------------------------------------- stage edits
    Case(
        "stage edit: current stage removed -> back to stage 0",
        rolling(1),
        observe(weight=5),
        at(minutes=3),
        Phase.PROGRESSING,
        0,
        [TO_STABLE, traffic(mirror=100), ENSURE_A, ENSURE_B],
        ["StageEntered", "CandidateReady"],
        spec=make_spec(
            "2.0.0",
            stages=[
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "full", "weight": 100},
            ],
        ),
    ),
    Case(
        "stage edit: current stage's weight changed -> new weight, recorded",
        rolling(1),
        observe(weight=5),
        at(minutes=3),
        Phase.PROGRESSING,
        1,
        [ENSURE_A, ENSURE_B, traffic(10)],
        ["StageUpdated"],
        spec=make_spec(
            "2.0.0",
            stages=[
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "canary-5", "weight": 10, "duration": "10m"},
                {"name": "full", "weight": 100},
            ],
        ),
    ),
]


# ------------------------------------------------------------------------------ runner


def convergent(d: Decision, spec: ModelRolloutSpec) -> list[Action]:
    """What a repeated decision may emit: the state's slots, its route, retired slots to 0."""
    wanted: list[Action] = list(engine.desired_slots(spec, d.status))
    live = {e.slot for e in engine.desired_slots(spec, d.status)}
    return [
        *wanted,
        engine.desired_traffic(d.status),
        *(ScaleSlot(s, 0) for s in SLOTS if s not in live),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    d = engine.decide(case.spec, case.status, case.obs, case.now)

    assert d.status.phase is case.phase
    assert (d.status.stage.index if d.status.stage else None) == case.stage
    if case.actions is not None:
        assert effects(d) == case.actions
    assert new_events(case.status, d.status) == case.history
    if case.check is not None:
        case.check(d)
    assert verify(d.status.history) == []
    assert d.status.observed_generation == case.obs.generation
    assert {c.type for c in d.status.conditions} == {"Ready", "Reconciling", "Stalled"}
    assert all(c.observed_generation == case.obs.generation for c in d.status.conditions)
    if case.history:
        assert d.status.message  # a transition always leaves a summary
    # Traffic moving towards stable always happens before any scale-down.
    sets = [i for i, a in enumerate(d.actions) if isinstance(a, SetTraffic)]
    downs = [i for i, a in enumerate(d.actions) if isinstance(a, ScaleSlot)]
    if sets and downs and case.status.phase is not Phase.SUCCEEDED:
        assert min(sets) < min(downs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_is_idempotent(case: Case) -> None:
    first = engine.decide(case.spec, case.status, case.obs, case.now)
    again = engine.decide(case.spec, first.status, case.obs, case.now)

    assert dump(again.status) == dump(first.status)
    assert not [a for a in again.actions if isinstance(a, (EmitEvent, Notify))]
    allowed = convergent(first, case.spec)
    assert [a for a in effects(again) if a not in allowed] == []
