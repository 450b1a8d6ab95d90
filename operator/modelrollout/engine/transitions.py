"""State transitions, each one: rewrite the status, emit its actions, record it in the audit trail.

The machine and the command handler decide *when*; these functions know *how*. Traffic moving
towards stable is always emitted before the scale-down of the slot it leaves.
"""

from __future__ import annotations

from modelrollout.api.models import (
    AnalysisStatus,
    ModelRef,
    Phase,
    StageStatus,
)
from modelrollout.engine.plan import candidate_slot, desired_traffic, stable_slot
from modelrollout.engine.tick import OPERATOR, Tick
from modelrollout.engine.timing import human
from modelrollout.engine.types import EnsureSlot, ScaleSlot, SetTraffic


def new_stage(t: Tick, index: int, *, ready: bool) -> StageStatus:
    spec_stage = t.spec.stages[index]
    return StageStatus(
        index=index,
        name=spec_stage.name,
        weight=spec_stage.weight,
        mirror=spec_stage.mirror,
        started_at=t.now,
        ready_at=t.now if ready else None,
        candidate_ready_at=t.now if ready else None,
    )


def _stage_name(t: Tick) -> str | None:
    return t.status.stage.name if t.status.stage else None


def _label(t: Tick) -> str:
    stage = t.status.stage
    if stage is None:
        return "no stage"
    return f"stage {stage.name} ({stage.index + 1}/{len(t.spec.stages)})"


def _clear_pause(t: Tick) -> None:
    t.status.paused_at = None
    t.status.paused_by = None


# -------------------------------------------------------------------- initialisation


def begin_initialization(t: Tick, model: ModelRef) -> None:
    """First version ever: run it in slot a and point the route at it. No rollout."""
    st = t.status
    st.phase = Phase.IDLE
    st.stable_slot = "a"
    st.candidate = model
    st.candidate_version = model.version
    st.rollout_started_at = t.now
    st.rollback_reason = None
    st.stage = None
    st.analysis = AnalysisStatus()
    _clear_pause(t)
    t.act(EnsureSlot("a", model, t.spec.replicas))
    t.act(SetTraffic("a", None, 0, 0))
    t.event("Normal", "Initializing", f"first version {model.name} {model.version} in slot a")


def finish_initialization(t: Tick) -> None:
    st = t.status
    model = st.candidate
    assert model is not None
    st.phase = Phase.SUCCEEDED
    st.stable = model
    st.stable_version = model.version
    st.candidate = None
    st.candidate_version = None
    st.rollback_reason = None
    t.record("Initialized", f"first version {model.version} ready in slot a", model=model)
    t.event("Normal", "Initialized", f"{model.name} {model.version} serving from slot a")


def fail_initialization(t: Tick, reason: str) -> None:
    """Nothing else serves, so slot a is left running: it may still become ready."""
    st = t.status
    st.phase = Phase.FAILED
    st.rollback_reason = reason
    t.stall = ("ProgressDeadlineExceeded", reason)
    t.record("Failed", reason)
    t.event("Warning", "ProgressDeadlineExceeded", reason)
    t.notify("Failed", reason)


# ------------------------------------------------------------------------- rollouts


def start_rollout(t: Tick, model: ModelRef, reason: str, actor: str = OPERATOR) -> None:
    """Deploy ``model`` in the candidate slot (the stable slot keeps running) at stage 0."""
    st = t.status
    slot = candidate_slot(st)
    st.phase = Phase.PROGRESSING
    st.candidate = model
    st.candidate_version = model.version
    st.rollout_started_at = t.now
    st.rollback_reason = None
    st.stage = new_stage(t, 0, ready=False)
    st.analysis = AnalysisStatus()
    _clear_pause(t)
    t.act(EnsureSlot(slot, model, t.spec.replicas))
    t.record("RolloutStarted", reason, actor=actor)
    t.record("StageEntered", f"rollout of {model.version} begins", to_stage=st.stage.name)
    t.event("Normal", "RolloutStarted", f"{model.version} in slot {slot}: {reason}")
    t.notify("RolloutStarted", f"rollout of {model.name} {model.version} started: {reason}")
    if t.spec.paused:
        pause(t, "spec", "spec.paused")


def set_stage_traffic(t: Tick, why: str) -> None:
    """The candidate is ready (and the gates are open): give it this stage's traffic."""
    st = t.status
    assert st.stage is not None
    st.stage.ready_at = t.now
    traffic = desired_traffic(st)
    t.act(traffic)
    t.record(
        "CandidateReady",
        f"{why}; candidate weight {st.stage.weight}%, mirror {st.stage.mirror}%",
        to_stage=st.stage.name,
    )
    t.event("Normal", "TrafficShifted", f"{_label(t)}: {why}")


def enter_stage(t: Tick, index: int, reason: str, actor: str = OPERATOR) -> None:
    """Move to stage ``index`` (candidate ready): set its traffic, reset the analysis."""
    st = t.status
    previous = _stage_name(t)
    metrics = list(st.analysis.results)
    st.stage = new_stage(t, index, ready=True)
    st.analysis = AnalysisStatus()
    t.act(desired_traffic(st))
    t.record(
        "StageEntered",
        reason,
        from_stage=previous,
        to_stage=st.stage.name,
        metrics=metrics,
        actor=actor,
    )
    message = f"{previous} -> {st.stage.name}: weight {st.stage.weight}%, mirror {st.stage.mirror}%"
    t.event("Normal", "StageEntered", message)
    t.notify("StageEntered", f"{st.candidate_version}: {message} ({reason})")


def restart_stage(t: Tick, index: int, event: str, reason: str) -> None:
    """Take traffic back to stable and wait for readiness again in stage ``index``."""
    st = t.status
    previous = _stage_name(t)
    had_traffic = st.stage is not None and st.stage.ready_at is not None
    st.stage = new_stage(t, index, ready=False)
    st.analysis = AnalysisStatus()
    if had_traffic:
        t.urgent = True
        t.act(SetTraffic(stable_slot(st), None, 0, 0))
    t.record(event, reason, from_stage=previous, to_stage=st.stage.name)
    t.event("Warning", event, reason)


def promote(t: Tick, reason: str, actor: str = OPERATOR) -> None:
    """Switch roles: the candidate slot becomes stable as is (no pod is recreated); the old
    stable slot is scaled down after the route has been switched."""
    st = t.status
    old, new = stable_slot(st), candidate_slot(st)
    model = st.candidate
    assert model is not None
    t.urgent = True
    t.act(SetTraffic(new, None, 0, 0))
    t.act(ScaleSlot(old, 0))
    t.record(
        "Promoted", reason, from_stage=_stage_name(t), metrics=st.analysis.results, actor=actor
    )
    st.phase = Phase.SUCCEEDED
    st.stable = model
    st.stable_version = model.version
    st.stable_slot = new
    st.candidate = None
    st.candidate_version = None
    st.stage = None
    st.rollback_reason = None
    _clear_pause(t)
    t.event("Normal", "Promoted", f"{model.version} promoted, serving from slot {new}: {reason}")
    t.notify("Promoted", f"{model.name} {model.version} promoted: {reason}")


def rollback(
    t: Tick,
    code: str,
    reason: str,
    *,
    phase: Phase = Phase.ROLLED_BACK,
    actor: str = OPERATOR,
) -> None:
    """100% to stable first, then scale the candidate down, then record why. The stage is kept
    in the status to show where it happened."""
    st = t.status
    t.urgent = True
    t.act(SetTraffic(stable_slot(st), None, 0, 0))
    t.act(ScaleSlot(candidate_slot(st), 0))
    st.phase = phase
    st.rollback_reason = reason
    _clear_pause(t)
    t.stall = (code, reason)
    t.record(
        "RolledBack",
        f"{code}: {reason}",
        from_stage=_stage_name(t),
        metrics=st.analysis.results,
        actor=actor,
    )
    t.event("Warning", code, f"rolled back to {st.stable_version}: {reason}")
    t.notify("RolledBack", f"{st.candidate_version} rolled back to {st.stable_version}: {reason}")


def revert(t: Tick) -> None:
    """spec.model is the stable version again: drop the candidate; the desired version serves."""
    st = t.status
    reason = "spec reverted to stable version"
    t.urgent = True
    t.act(SetTraffic(stable_slot(st), None, 0, 0))
    t.act(ScaleSlot(candidate_slot(st), 0))
    t.record("RolledBack", f"{reason} {st.stable_version}", from_stage=_stage_name(t))
    t.event("Normal", "Reverted", f"{st.candidate_version} abandoned: {reason} {st.stable_version}")
    t.notify("RolledBack", f"{st.candidate_version} abandoned: {reason} {st.stable_version}")
    st.phase = Phase.SUCCEEDED
    st.candidate = None
    st.candidate_version = None
    st.stage = None
    st.rollback_reason = None
    _clear_pause(t)


def settle_on_stable(t: Tick) -> None:
    """After a rollback, spec.model was set back to the stable version: nothing left to do."""
    st = t.status
    t.record(
        "Reverted",
        f"spec.model set back to the stable version {st.stable_version}",
        model=st.stable,
    )
    t.event("Normal", "Reverted", f"spec.model is the stable version {st.stable_version} again")
    st.phase = Phase.SUCCEEDED
    st.candidate = None
    st.candidate_version = None
    st.stage = None
    st.rollback_reason = None


def supersede(t: Tick, model: ModelRef) -> None:
    """A new version replaces the running candidate: stable 100% first, then the candidate slot
    gets the new version, and the rollout starts again at stage 0. A pause stays in force."""
    st = t.status
    old = st.candidate
    paused_by = st.paused_by if st.phase is Phase.PAUSED else None
    t.urgent = True
    t.act(SetTraffic(stable_slot(st), None, 0, 0))
    t.act(EnsureSlot(candidate_slot(st), model, t.spec.replicas))
    previous = _stage_name(t)
    old_version = old.version if old else "none"
    t.record(
        "Superseded", f"{old_version} superseded by {model.version}", from_stage=previous, model=old
    )
    st.phase = Phase.PROGRESSING
    st.candidate = model
    st.candidate_version = model.version
    st.rollout_started_at = t.now
    st.rollback_reason = None
    st.stage = new_stage(t, 0, ready=False)
    st.analysis = AnalysisStatus()
    _clear_pause(t)
    t.record(
        "StageEntered",
        f"rollout of {model.version} begins",
        from_stage=previous,
        to_stage=st.stage.name,
    )
    t.event("Normal", "Superseded", f"{old_version} superseded by {model.version}")
    t.notify("Superseded", f"{old_version} superseded by {model.version}; restarting at stage 0")
    if paused_by == "command":
        pause(t, "command", OPERATOR, quiet=True)
    elif t.spec.paused:
        pause(t, "spec", "spec.paused", quiet=paused_by == "spec")


# --------------------------------------------------------------------------- pausing


def pause(t: Tick, by: str, actor: str, *, quiet: bool = False) -> None:
    st = t.status
    st.phase = Phase.PAUSED
    st.paused_by = "spec" if by == "spec" else "command"
    st.paused_at = t.now
    if not quiet:
        t.record("Paused", f"paused by {by} in {_label(t)}", to_stage=_stage_name(t), actor=actor)
        t.event("Normal", "Paused", f"paused by {actor} in {_label(t)}; traffic frozen")


def resume(t: Tick, actor: str) -> None:
    """Stop the pause: the stage clock (readyAt, or startedAt while waiting for readiness) and
    the analysis schedule move forward by the paused time."""
    st = t.status
    paused_for = t.now - (st.paused_at or t.now)
    stage = st.stage
    if stage is not None:
        if stage.ready_at is not None:
            stage.ready_at = stage.ready_at + paused_for
        elif stage.started_at is not None:
            stage.started_at = stage.started_at + paused_for
        if stage.gates_checked_at is not None:
            stage.gates_checked_at = stage.gates_checked_at + paused_for
    if st.analysis.last_run_at is not None:
        st.analysis.last_run_at = st.analysis.last_run_at + paused_for
    st.phase = Phase.PROGRESSING
    _clear_pause(t)
    t.record(
        "Resumed",
        f"resumed by {actor} after {human(paused_for)} paused",
        to_stage=_stage_name(t),
        actor=actor,
    )
    t.event("Normal", "Resumed", f"resumed by {actor} in {_label(t)}")
