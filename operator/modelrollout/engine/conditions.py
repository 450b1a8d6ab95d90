"""kstatus-compatible conditions and the one-line status message, derived from the final state.

Both are functions of (spec, status, observation, now) plus what the tick itself decided about
stalls, so deciding twice on the same input writes the same conditions.

* Ready: True only when Succeeded and the route serves the stable 100%.
* Reconciling: True while rolling out (reason: the stage; ``Paused`` while paused) or initialising
  the first version.
* Stalled: True on an invalid spec, a routing error, an analysis Hold, or after a rollback or
  failure (reason: why).

``lastTransitionTime`` only changes when a condition's status flips.
"""

from __future__ import annotations

from datetime import datetime

from modelrollout.api.models import Condition, ModelRolloutStatus, Phase
from modelrollout.engine.analysis import held
from modelrollout.engine.plan import (
    ACTIVE,
    analysis_passed,
    candidate_slot,
    desired_traffic,
    entry_gate_types,
    gates_of,
    pending_gates,
    route_agrees,
    slot_of,
    stable_slot,
    stage_checks,
    stage_end,
)
from modelrollout.engine.tick import Tick

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
HOLD_REASONS = frozenset({"InvalidSpec", "RoutingError"})


def set_condition(
    status: ModelRolloutStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    text = "True" if value else "False"
    for index, existing in enumerate(status.conditions):
        if existing.type == type_:
            changed = existing.status != text
            status.conditions[index] = Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=now if changed else existing.last_transition_time or now,
                observed_generation=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )


def find(status: ModelRolloutStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def stage_reason(name: str) -> str:
    """``canary-5`` -> ``StageCanary5``: condition reasons are CamelCase without dashes."""
    return "Stage" + "".join(part[:1].upper() + part[1:] for part in name.split("-"))


# ----------------------------------------------------------------------------- apply


def refresh(t: Tick) -> None:
    """Write message, Ready, Reconciling and Stalled for the final state of the tick."""
    st, gen, now = t.status, t.obs.generation, t.now
    if t.hold is not None:
        reason, text = t.hold
        st.message = text
        for type_, value in ((READY, False), (RECONCILING, False), (STALLED, True)):
            set_condition(st, type_, value, reason, text, now, gen)
        return

    st.message = message(t)
    converged = route_agrees(t.obs.route, desired_traffic(st))

    if st.phase is Phase.SUCCEEDED and converged:
        set_condition(st, READY, True, "Succeeded", st.message, now, gen)
    elif st.phase is Phase.SUCCEEDED:
        route = t.obs.route.message if t.obs.route and t.obs.route.message else "not read yet"
        set_condition(
            st,
            READY,
            False,
            "RouteConverging",
            f"waiting for the route to send 100% to slot {stable_slot(st)}; route: {route}",
            now,
            gen,
        )
    else:
        set_condition(st, READY, False, _not_ready_reason(st), st.message, now, gen)

    if st.phase in ACTIVE and st.stage is not None:
        set_condition(st, RECONCILING, True, stage_reason(st.stage.name), st.message, now, gen)
    elif st.phase is Phase.PAUSED:
        # Still rolling out, only held: kstatus (Flux) must keep waiting, not call it Current.
        set_condition(st, RECONCILING, True, "Paused", st.message, now, gen)
    elif st.stable is None and st.phase is Phase.IDLE:
        set_condition(st, RECONCILING, True, "Initializing", st.message, now, gen)
    else:
        set_condition(st, RECONCILING, False, st.phase.value, st.message, now, gen)

    stall = _stall(t)
    if stall is None:
        set_condition(st, STALLED, False, st.phase.value, "", now, gen)
    else:
        set_condition(st, STALLED, True, stall[0], stall[1], now, gen)


def _not_ready_reason(st: ModelRolloutStatus) -> str:
    return {
        Phase.IDLE: "Initializing",
        Phase.PROGRESSING: "RolloutInProgress",
        Phase.PROMOTING: "RolloutInProgress",
        Phase.PAUSED: "Paused",
    }.get(st.phase, st.phase.value)


def _stall(t: Tick) -> tuple[str, str] | None:
    st = t.status
    if t.stall is not None:
        return t.stall
    if st.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        previous = find(t.before, STALLED)
        reason = st.phase.value
        if (
            previous is not None
            and previous.status == "True"
            and previous.reason not in HOLD_REASONS
        ):
            reason = previous.reason
        return reason, st.rollback_reason or st.phase.value
    if st.phase in ACTIVE or st.phase is Phase.PAUSED:
        limit = held(t.spec, st.analysis, _entry_gates(t))
        if limit is not None:
            return limit.code, limit.message
    return None


# --------------------------------------------------------------------------- message


def message(t: Tick) -> str:
    st, spec = t.status, t.spec
    if st.stable is None:
        model = st.candidate
        if st.phase is Phase.FAILED:
            return f"initialisation failed: {st.rollback_reason}"
        if model is None:
            return "waiting for the first version"
        slot = slot_of(t.obs, "a")
        return (
            f"initialising {model.name} {model.version} in slot a: "
            f"{slot.ready}/{spec.replicas} replicas ready"
        )
    if st.phase is Phase.SUCCEEDED:
        return f"{st.stable.name} {st.stable_version} serving 100% from slot {stable_slot(st)}"
    if st.phase is Phase.ROLLED_BACK:
        return f"rolled back to {st.stable_version}: {st.rollback_reason}"
    if st.phase is Phase.FAILED:
        return f"failed, {st.stable_version} serves 100%: {st.rollback_reason}"
    stage = st.stage
    if stage is None:
        return f"{st.phase.value}"
    head = f"{st.candidate_version} stage {stage.name} ({stage.index + 1}/{len(spec.stages)})"
    traffic = f"weight {stage.weight}%, mirror {stage.mirror}%"
    if st.phase is Phase.PAUSED:
        state = traffic if stage.ready_at else "candidate has no traffic yet"
        return f"{head}: paused by {st.paused_by}; {state}"
    if stage.ready_at is None:
        return f"{head}: {_waiting_for_traffic(t)}"
    return f"{head}: {traffic}; {_in_stage(t)}"


def _waiting_for_traffic(t: Tick) -> str:
    st = t.status
    assert st.stage is not None and st.candidate is not None
    slot = slot_of(t.obs, candidate_slot(st))
    if st.stage.candidate_ready_at is None:
        return (
            f"waiting for the candidate to become ready ({slot.ready}/{t.spec.replicas} replicas "
            f"ready in slot {candidate_slot(st)})"
        )
    gates = gates_of(t.spec, entry_gate_types(t.spec, st.stage.index))
    names = ", ".join(f"{g.name} ({g.type})" for g in gates)
    text = f"candidate ready; waiting for gates to open: {names}"
    limit = held(t.spec, st.analysis, _entry_gates(t))
    return f"{text}; {limit.message}" if limit else text


def _entry_gates(t: Tick) -> list[str]:
    """Names of the gates a stage without traffic yet waits on (none once it has traffic)."""
    stage = t.status.stage
    if stage is None or stage.ready_at is not None:
        return []
    return [g.name for g in gates_of(t.spec, entry_gate_types(t.spec, stage.index))]


def _in_stage(t: Tick) -> str:
    st, spec, now = t.status, t.spec, t.now
    assert st.stage is not None
    parts: list[str] = []
    checks = stage_checks(spec, st.stage.name)
    if checks:
        verdict = st.analysis.last_verdict.value if st.analysis.last_verdict else "none yet"
        parts.append(f"analysis {st.analysis.runs} run(s), last {verdict}")
    limit = held(spec, st.analysis)
    if limit is not None:
        parts.append(limit.message)
    end = stage_end(spec, st)
    gates = pending_gates(spec, st, now)
    if gates:
        parts.append("waiting for confirm-promotion gates: " + ", ".join(g.name for g in gates))
    elif end is not None and now < end:
        # The end time, not the time left: a countdown would change the status (one more
        # apiserver write) on every wake-up. kubectl modelrollout status shows the time left.
        parts.append(f"stage ends at {end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    elif not analysis_passed(spec, st):
        parts.append("waiting for a successful analysis run")
    elif not slot_of(t.obs, candidate_slot(st)).is_ready:
        parts.append("waiting for every candidate replica to be ready")
    return "; ".join(parts) or "stage complete"
