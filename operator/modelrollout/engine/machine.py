"""``decide``: one pure step of the rollout state machine.

Read top to bottom, one tick is: hold on an invalid spec or a routing error; handle a new
manual command; then the flow for the phase (initialise, settled, rolling); then assemble the
actions (transition actions, the slots that should run, the route if it drifted, scale-downs
of retired slots), the conditions, the message and the requeue time. See the package
docstring for the semantics.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar, cast

from pydantic import BaseModel

from modelrollout import audit
from modelrollout.api.models import (
    HistoryEntry,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    WebhookType,
    Weights,
)
from modelrollout.engine import commands, conditions
from modelrollout.engine import transitions as tr
from modelrollout.engine.analysis import held, record_gate_round, record_run
from modelrollout.engine.plan import (
    ACTIVE,
    ROLLING,
    candidate_slot,
    checks_due,
    describe_traffic,
    desired_slots,
    desired_traffic,
    entry_gate_types,
    gates_due,
    gates_of,
    is_last,
    misroutes,
    model_ref,
    next_analysis_at,
    next_gate_call_at,
    ready_with,
    route_agrees,
    serving,
    stage_complete,
    stage_end,
)
from modelrollout.engine.tick import Tick
from modelrollout.engine.timing import (
    HOLD_RETRY,
    MIN_REQUEUE,
    analysis_interval,
    gate_interval,
    human,
    progress_deadline,
    ready_poll,
    utc,
)
from modelrollout.engine.types import (
    Action,
    Decision,
    EnsureSlot,
    GateResult,
    Observation,
    ScaleSlot,
    SetTraffic,
    Wake,
)

TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED})
MAX_STEPS = 64
"""More steps than any chain of transitions in one tick can take (a guard, never reached)."""


def decide(
    spec: ModelRolloutSpec,
    status: ModelRolloutStatus,
    obs: Observation,
    now: datetime,
    *,
    history_limit: int = audit.DEFAULT_LIMIT,
) -> Decision:
    """The new status, the ordered actions to carry it out, and when to look again."""
    now = utc(now)
    t = Tick(
        spec=spec,
        obs=obs,
        now=now,
        before=status,
        status=working_copy(status),
        history_limit=history_limit,
    )
    t.status.observed_generation = obs.generation
    if obs.validation_errors:
        _hold(t, "InvalidSpec", "invalid spec: " + "; ".join(obs.validation_errors))
    elif obs.routing_error:
        _hold(t, "RoutingError", f"routing error: {obs.routing_error}")
    else:
        _run_to_fixed_point(t)
    return _finish(t)


def read_back(
    spec: ModelRolloutSpec,
    decision: Decision,
    obs: Observation,
    now: datetime,
    *,
    history_limit: int = audit.DEFAULT_LIMIT,
) -> Decision:
    """``decision`` once the route its tick wrote has been read back (``obs.route``, the tick's
    observation otherwise). Exactly what the next look would decide at ``now``, without it:

    - a promotion's Ready turns True in its own status write (the route is read back before
      the status is written), not in a write of its own a look later (900 status writes in a
      round of 1,000 rollouts, docs/performance.md);
    - the next look is the next thing the tick waits for (stage end, analysis, ...), not a
      look a second later to read the route back (a quarter of all reconciles).

    Only the Succeeded phase's conditions depend on the route (Ready says whether what is
    read back serves it, agreeing or not); nothing that a tick decides otherwise does (stage
    clocks start when the candidate is ready). Any other decision whose route does not
    agree, or that waits for nothing of the route, is returned as it was. The actions are
    kept: they are carried out already."""
    st = decision.status
    succeeded = st.phase is Phase.SUCCEEDED
    if decision.requeue_reason is not Wake.CONVERGE and not succeeded:
        return decision
    if not succeeded and not route_agrees(obs.route, desired_traffic(st)):
        return decision
    t = Tick(
        spec=spec,
        obs=obs,
        now=utc(now),
        before=st,
        status=working_copy(st) if succeeded else st,
        history_limit=history_limit,
    )
    t.wakes = list(decision.wakes)
    if succeeded:
        conditions.refresh(t)
    requeue_after, requeue_reason = _requeue(t)
    return Decision(
        status=t.status,
        actions=decision.actions,
        requeue_after=requeue_after,
        requeue_reason=requeue_reason,
        wakes=tuple(t.wakes),
    )


def invalid_spec_status(
    status: ModelRolloutStatus,
    problems: list[str],
    generation: int,
    now: datetime,
    *,
    history_limit: int = audit.DEFAULT_LIMIT,
) -> ModelRolloutStatus:
    """For a spec that does not even parse: the held status (conditions, message, audit entry
    when the problem changed); everything else is kept so fixing the spec resumes."""
    now = utc(now)
    st = working_copy(status)
    st.observed_generation = generation
    text = "invalid spec: " + "; ".join(problems)
    if _hold_changed(status, "InvalidSpec", text):
        entry = HistoryEntry.model_validate(
            {
                "time": now,
                "event": "InvalidSpec",
                "reason": text,
                "model": st.candidate or st.stable,
                "stable_version": st.stable_version,
            }
        )
        audit.append(st.history, entry, history_limit)
    st.message = text
    for type_, value in (
        (conditions.READY, False),
        (conditions.RECONCILING, False),
        (conditions.STALLED, True),
    ):
        conditions.set_condition(st, type_, value, "InvalidSpec", text, now, generation)
    return st


def working_copy(status: ModelRolloutStatus) -> ModelRolloutStatus:
    """A deep copy of ``status`` that shares its audit entries: they are sealed (hashed) and
    never changed, only appended and dropped, so a new list of the same entries is enough.
    The history is most of a status: deep-copying it twice per step was the engine's biggest
    cost (docs/performance.md)."""
    history = status.history
    status.history = []
    try:
        copied = _copy_model(status)
    finally:
        status.history = history
    copied.history = list(history)
    return copied


_V = TypeVar("_V")


def _copy_model(value: _V) -> _V:
    """A deep copy of a status (or any part of it), about 2.5 times as fast as
    ``model_copy(deep=True)`` (40 against 95 µs for a bench rollout's status on a quiet
    machine): models, lists and dicts are copied, everything else is shared, which is safe
    because a status's leaves are immutable (str, int, float, datetime, enums, None).
    ``copy.deepcopy``'s generic machinery (memo, reduce) is what made the engine's copies a
    tenth of the operator's CPU (docs/performance.md)."""
    if isinstance(value, BaseModel):
        copied = value.__copy__()  # pydantic's shallow copy: __dict__, fields set, extras
        values = copied.__dict__
        for key, item in values.items():
            values[key] = _copy_model(item)
        return copied
    if isinstance(value, list):
        return cast(_V, [_copy_model(item) for item in value])
    if isinstance(value, dict):
        return cast(_V, {key: _copy_model(item) for key, item in value.items()})
    return value


def _run_to_fixed_point(t: Tick) -> None:
    """Step until a step changes nothing, so one decide does what repeated decides on the same
    input would do, and deciding again on the result is a no-op (idempotence). Each step only
    uses the inputs that were due at its start; a consumed input is no longer due after it."""
    command = t.obs.command
    for _ in range(MAX_STEPS):
        start = working_copy(t.status)
        t.step_start = start
        t.due_checks = checks_due(t.spec, start, t.now)
        t.due_gates = gates_due(t.spec, start, t.now)
        t.wakes.clear()
        if command is not None and command.id != start.last_command:
            commands.handle(t, command)
        _step(t)
        if t.status == start:
            return


# ------------------------------------------------------------------------------ holds


def _hold_changed(status: ModelRolloutStatus, reason: str, text: str) -> bool:
    previous = conditions.find(status, conditions.STALLED)
    return not (
        previous is not None
        and previous.status == "True"
        and previous.reason == reason
        and previous.message == text
    )


def _hold(t: Tick, reason: str, text: str) -> None:
    """No workload or traffic action; state kept; say so once per distinct problem."""
    t.hold = (reason, text)
    if _hold_changed(t.before, reason, text):
        t.record(reason, text, model=t.status.candidate or t.status.stable)
        t.event("Warning", reason, text)


# ------------------------------------------------------------------------------ flows


def _step(t: Tick) -> None:
    st = t.status
    if st.stable is None:
        _initialize(t)
    elif st.phase in ROLLING:
        _rolling(t)
    else:
        _settled(t)


def _initialize(t: Tick) -> None:
    """The first version: slot a, route to it, Succeeded once ready. A missed deadline is
    Failed but not final: nothing else serves, so slot a keeps running and may still make it."""
    st, wanted = t.status, model_ref(t.spec.model)
    if st.candidate != wanted or st.rollout_started_at is None:
        tr.begin_initialization(t, wanted)
    if ready_with(t.obs, "a", wanted.version):
        tr.finish_initialization(t)
        return
    if st.phase is Phase.FAILED:
        return
    assert st.rollout_started_at is not None
    deadline = st.rollout_started_at + progress_deadline(t.spec)
    if t.now > deadline:
        tr.fail_initialization(
            t,
            f"slot a not ready with {wanted.version} within progressDeadline "
            f"{human(progress_deadline(t.spec))}",
        )
        return
    t.poll_readiness()
    t.wake_at(deadline, Wake.DEADLINE)


def _settled(t: Tick) -> None:
    """Succeeded, RolledBack or Failed: start a rollout when spec.model differs."""
    st, wanted = t.status, model_ref(t.spec.model)
    if wanted == st.stable:
        if st.phase in (Phase.ROLLED_BACK, Phase.FAILED):
            tr.settle_on_stable(t)
        st.phase = Phase.SUCCEEDED
        return
    if st.phase in (Phase.ROLLED_BACK, Phase.FAILED) and wanted == st.candidate:
        return  # terminal until spec.model changes or a retry command
    assert st.stable is not None
    tr.start_rollout(t, wanted, f"spec.model changed from {st.stable.version} to {wanted.version}")


def _rolling(t: Tick) -> None:
    st, spec, wanted = t.status, t.spec, model_ref(t.spec.model)
    if wanted == st.stable:
        tr.revert(t)
        return
    if wanted != st.candidate:
        tr.supersede(t, wanted)
        return
    _follow_stage_edits(t)
    if st.phase is Phase.PAUSED:
        _protect_users(t)
        if st.paused_by == "spec" and not spec.paused:
            tr.resume(t, "spec.paused")
        else:
            return
    elif spec.paused:
        tr.pause(t, "spec", "spec.paused")
        return
    _progress(t)


def _follow_stage_edits(t: Tick) -> None:
    """spec.stages was edited mid-rollout: follow the current stage by name; if it is gone,
    restart at stage 0 (less traffic is the safe direction)."""
    st, stages = t.status, t.spec.stages
    stage = st.stage
    if stage is None:
        tr.restart_stage(t, 0, "StageEntered", "rollout without a stage; starting at stage 0")
        return
    index = next((i for i, s in enumerate(stages) if s.name == stage.name), None)
    if index is None:
        tr.restart_stage(
            t, 0, "StageEntered", f"spec.stages changed: stage {stage.name} was removed"
        )
        return
    wanted = stages[index]
    stage.index = index
    if (stage.weight, stage.mirror) != (wanted.weight, wanted.mirror):
        t.record(
            "StageUpdated",
            f"spec.stages changed: {stage.name} weight {stage.weight}->{wanted.weight}%, "
            f"mirror {stage.mirror}->{wanted.mirror}%",
            to_stage=stage.name,
        )
        stage.weight, stage.mirror = wanted.weight, wanted.mirror


def _protect_users(t: Tick) -> None:
    """A candidate with traffic but no ready replica of its version answers nothing: take the
    traffic back and wait for readiness again in the same stage."""
    st = t.status
    assert st.stage is not None and st.candidate is not None
    if st.stage.ready_at is None or serving(t.obs, candidate_slot(st), st.candidate.version):
        return
    tr.restart_stage(
        t,
        st.stage.index,
        "CandidateUnready",
        f"candidate {st.candidate.version} has no ready replica; traffic back to stable, "
        f"waiting for readiness in stage {st.stage.name}",
    )


def _progress(t: Tick) -> None:
    st, spec = t.status, t.spec
    assert st.stage is not None and st.candidate is not None
    ready = ready_with(t.obs, candidate_slot(st), st.candidate.version)
    if st.stage.ready_at is None:
        _await_traffic(t, ready)
        return
    _protect_users(t)
    if st.stage.ready_at is None:
        t.poll_readiness()  # the candidate lost readiness: wait for it
        return
    if not _absorb_analysis(t):
        return  # rolled back
    if held(spec, st.analysis) is not None:
        t.wake_at(next_analysis_at(spec, st), Wake.ANALYSIS)
        return
    if not ready:
        t.poll_readiness()  # partly ready: keep the traffic, do not move on
        return
    if not stage_complete(spec, st, t.now):
        end = stage_end(spec, st)
        t.wake_at(end if end is not None and end > t.now else None, Wake.STAGE_END)
        t.wake_at(next_analysis_at(spec, st), Wake.ANALYSIS)
        return
    index = st.stage.index
    evidence = _evidence(t)
    if is_last(spec, index):
        tr.promote(t, f"last stage {st.stage.name} complete; {evidence}")
        return
    if not _gates_open(t, entry_gate_types(spec, index + 1)):
        return
    tr.enter_stage(t, index + 1, f"{st.stage.name} complete; {evidence}")


def _evidence(t: Tick) -> str:
    results = t.status.analysis.results
    if not results:
        return "no analysis applies; duration elapsed"
    return (
        "analysis "
        + ", ".join(f"{r.name}={r.value:.6g}" if r.value is not None else r.name for r in results)
        + " Successful"
    )


def _await_traffic(t: Tick, ready: bool) -> None:
    """Stage without traffic yet: wait for readiness (within the deadline), then the gates."""
    st, spec = t.status, t.spec
    stage = st.stage
    assert stage is not None and stage.started_at is not None
    if not ready:
        deadline = stage.started_at + progress_deadline(spec)
        if t.now > deadline:
            tr.rollback(
                t,
                "ProgressDeadlineExceeded",
                f"candidate {st.candidate_version} not ready within progressDeadline "
                f"{spec.progress_deadline}",
                phase=Phase.FAILED,
            )
            return
        t.poll_readiness()
        t.wake_at(deadline, Wake.DEADLINE)
        return
    if stage.candidate_ready_at is None:
        stage.candidate_ready_at = t.now
    types = entry_gate_types(spec, stage.index)
    if not _gates_open(t, types):
        return
    names = [g.name for g in gates_of(spec, types)]
    why = "candidate ready" + (f", gates open: {', '.join(names)}" if names else "")
    tr.set_stage_traffic(t, why)


def _gates_open(t: Tick, types: frozenset[WebhookType]) -> bool:
    """True when no gate of ``types`` is configured or all answered Open this tick. Only answers
    to calls that were due (see gates_due) count, so repeating a tick counts nothing twice."""
    st, spec = t.status, t.spec
    gates = [g for g in spec.webhooks if g.type in types]
    if not gates:
        return True
    stage = st.stage
    assert stage is not None
    called = {g.name for g in t.due_gates if g.name in t.obs.gates}
    if not _same_stage(t) or not all(g.name in called for g in gates):
        due_at = next_gate_call_at(spec, st)
        t.wake_at(due_at if due_at and due_at > t.now else t.now + MIN_REQUEUE, Wake.GATE)
        return False
    stage.gates_checked_at = t.now
    answers = {g.name: t.obs.gates.get(g.name, GateResult.CLOSED) for g in gates}
    if all(a is GateResult.OPEN for a in answers.values()):
        # The gates answered: their timeout streak is over (it must not hold the stage later).
        st.analysis.inconclusive = 0
        return True
    timed_out = [name for name, a in answers.items() if a is GateResult.TIMEOUT]
    limit = record_gate_round(spec, st.analysis, timed_out)
    if limit is not None and limit.rollback:
        tr.rollback(t, limit.code, limit.message)
        return False
    if limit is not None and limit.first_time:
        t.record("AnalysisHold", limit.message, to_stage=stage.name)
        t.event("Warning", limit.code, limit.message)
    t.wake_in(gate_interval(spec), Wake.GATE)
    return False


def _same_stage(t: Tick) -> bool:
    """The stage has not been (re)entered since the step started."""
    before = t.step_start.stage if t.step_start else None
    now = t.status.stage
    return (
        before is not None
        and now is not None
        and (before.index, before.started_at, before.ready_at)
        == (now.index, now.started_at, now.ready_at)
    )


def _absorb_analysis(t: Tick) -> bool:
    """Fold this tick's analysis run (if one was due and reported). False after a rollback."""
    st, spec = t.status, t.spec
    assert st.stage is not None
    if t.obs.analysis is None or not t.due_checks or not _same_stage(t):
        return True
    outcome = record_run(spec, st.analysis, t.due_checks, t.obs.analysis, t.now)
    limit = outcome.limit
    if limit is not None and limit.rollback:
        tr.rollback(t, limit.code, limit.message)
        return False
    if outcome.failed:
        t.record(
            "AnalysisFailed",
            f"{'; '.join(r.name for r in outcome.failed)} failed ({st.analysis.failures} of "
            f"failureLimit {spec.analysis.failure_limit} tolerated)",
            to_stage=st.stage.name,
            metrics=outcome.results,
        )
        t.event(
            "Warning",
            "AnalysisFailed",
            f"stage {st.stage.name}: " + "; ".join(r.name for r in outcome.failed),
        )
    if limit is not None and limit.first_time:
        t.record("AnalysisHold", limit.message, to_stage=st.stage.name, metrics=outcome.results)
        t.event("Warning", limit.code, limit.message)
    return True


# ----------------------------------------------------------------------------- finish


def _finish(t: Tick) -> Decision:
    st = t.status
    if t.hold is not None:
        actions: list[Action] = list(t.signals)
    else:
        _note_misroute(t)
        actions = _assemble(t) + t.signals
        traffic = desired_traffic(st)
        weight = traffic.candidate_weight if traffic.candidate_slot else 0
        mirror = traffic.mirror if traffic.candidate_slot else 0
        route = t.obs.route
        st.weights = Weights(
            stable=100 - weight,
            candidate=weight,
            mirror=mirror,
            # what the candidate's ready pods serve under replica-ratio routing
            actual_candidate=route.actual_candidate if route is not None else None,
        )
    conditions.refresh(t)
    requeue_after, requeue_reason = _requeue(t)
    return Decision(
        status=st,
        actions=actions,
        requeue_after=requeue_after,
        requeue_reason=requeue_reason,
        wakes=tuple(t.wakes),
    )


def _note_misroute(t: Tick) -> None:
    """A route that sends live traffic elsewhere than the committed state says, while nothing
    in this tick changes what it should say: someone else changed it (a manifest re-applied
    as first written, a GitOps sync, a hand edit). :func:`_assemble` puts it back; this
    records what was found in the audit trail and an Event, once per distinct finding (a
    controller fighting the operator does not flood either)."""
    route, wanted = t.obs.route, desired_traffic(t.status)
    if not t.obs.route_edited or route is None or not route.found or route.pending is not None:
        return
    if wanted != desired_traffic(t.before) or not misroutes(route, t.status):
        return
    reason = (
        f"the route was changed by someone else and sent traffic where it should not: "
        f"{route.message}; restored to {describe_traffic(wanted)}"
    )
    last = t.status.history[-1] if t.status.history else None
    if last is None or last.event != "RouteCorrected" or last.reason != reason:
        t.record("RouteCorrected", reason, model=t.status.candidate or t.status.stable)
        t.event("Warning", "RouteCorrected", reason)


def _assemble(t: Tick) -> list[Action]:
    st, obs = t.status, t.obs
    effects = list(t.effects)
    ensured = {a.slot for a in effects if isinstance(a, EnsureSlot)}
    wanted = desired_slots(t.spec, st)
    routine: list[Action] = [e for e in wanted if e.slot not in ensured]
    effects = effects + routine if t.urgent else routine + effects

    desired = desired_traffic(st)
    sets = [a for a in effects if isinstance(a, SetTraffic)]
    if (sets and sets[-1] != desired) or (not sets and not route_agrees(obs.route, desired)):
        effects.append(desired)
    # Traffic goes only to slots that exist: a first version's route is written once its
    # Deployment does (the route as the user wrote it serves until then), never before it.
    exists = {slot for slot, state in obs.slots.items() if state.exists}
    effects = [e for e in effects if not isinstance(e, SetTraffic) or _routes_to(e) <= exists]

    live = {e.slot for e in wanted}
    scaled = {a.slot for a in effects if isinstance(a, ScaleSlot)}
    for slot in ("a", "b"):
        state = obs.slots.get(slot)
        if (
            slot not in live
            and slot not in scaled
            and state is not None
            and state.exists
            and state.desired > 0
        ):
            effects.append(ScaleSlot(slot, 0))
    return effects


def _routes_to(traffic: SetTraffic) -> set[str]:
    named: set[str] = {traffic.stable_slot}
    if traffic.candidate_slot is not None and (traffic.candidate_weight or traffic.mirror):
        named.add(traffic.candidate_slot)
    return named


def _requeue(t: Tick) -> tuple[timedelta | None, Wake | None]:
    """When to look again, and why (the earliest of what the tick waits for)."""
    st, spec = t.status, t.spec
    interval = analysis_interval(spec)
    if t.hold is not None:
        return min(HOLD_RETRY, interval), Wake.HOLD
    converged = route_agrees(t.obs.route, desired_traffic(st))
    if st.phase in TERMINAL and st.stable is not None:
        return (None, None) if converged else (MIN_REQUEUE, Wake.CONVERGE)
    if not converged:
        return MIN_REQUEUE, Wake.CONVERGE
    if st.phase in ACTIVE and st.stage is not None and st.stage.ready_at is not None:
        t.wake_at(next_analysis_at(spec, st), Wake.ANALYSIS)
    if not t.wakes:
        return (None, None) if st.phase in TERMINAL else (interval, Wake.INTERVAL)
    when, why = min(t.wakes, key=lambda wake: wake[0])
    # At most an interval ahead; a readiness poll as far as it asked: while the Deployments
    # are watched it is only a fallback, and one per interval was half of all reconciles at
    # 1,000 rollouts (docs/performance.md).
    limit = max(interval, ready_poll(t.obs.slots_watched)) if why is Wake.READINESS else interval
    if when - t.now > limit:
        return limit, Wake.INTERVAL
    return max(MIN_REQUEUE, when - t.now), why
