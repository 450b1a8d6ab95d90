"""Manual commands (pause, resume, promote, abort, retry), each handled exactly once.

A command that does not apply in the current phase is recorded as ignored, with a message
saying why, in the audit trail and as a Normal event: it is not an error.
"""

from __future__ import annotations

from modelrollout.api.models import Phase
from modelrollout.engine import transitions as tr
from modelrollout.engine.plan import ROLLING, candidate_slot, model_ref, ready_with
from modelrollout.engine.tick import Tick
from modelrollout.engine.types import Command, CommandVerb


def handle(t: Tick, command: Command) -> None:
    st = t.status
    st.last_command = command.id
    handler = _HANDLERS[command.verb]
    problem = handler(t, command, dry_run=True)
    if problem:
        t.record("Command", f"{command.verb} ignored: {problem}", actor=command.actor)
        t.event("Normal", "CommandIgnored", f"{command.verb} by {command.actor} ignored: {problem}")
        return
    t.record("Command", f"{command.verb} accepted", actor=command.actor)
    handler(t, command, dry_run=False)


def _rolling_problem(t: Tick) -> str | None:
    st = t.status
    if st.stable is None:
        return "the first version is being initialised; there is no rollout"
    if st.phase not in ROLLING:
        return f"no rollout in progress (phase {st.phase})"
    return None


def _pause(t: Tick, command: Command, *, dry_run: bool) -> str | None:
    problem = _rolling_problem(t)
    if problem:
        return problem
    if t.status.phase is Phase.PAUSED:
        return f"already paused (by {t.status.paused_by})"
    if not dry_run:
        tr.pause(t, "command", command.actor)
    return None


def _resume(t: Tick, command: Command, *, dry_run: bool) -> str | None:
    st = t.status
    if st.phase is not Phase.PAUSED:
        return f"not paused (phase {st.phase})"
    if st.paused_by == "spec":
        return "paused by spec.paused; set spec.paused to false to resume"
    if dry_run:
        return None
    if t.spec.paused:
        # The command's pause ends, but spec.paused holds the rollout from now on.
        st.paused_by = "spec"
        t.event("Normal", "Paused", "resume accepted, but spec.paused still pauses the rollout")
    else:
        tr.resume(t, command.actor)
    return None


def _promote(t: Tick, command: Command, *, dry_run: bool) -> str | None:
    problem = _rolling_problem(t)
    if problem:
        return problem
    st = t.status
    assert st.candidate is not None
    wanted = model_ref(t.spec.model)
    if wanted != st.candidate:
        return f"spec.model is {wanted.version}, not the candidate {st.candidate.version}"
    if not ready_with(t.obs, candidate_slot(st), st.candidate.version):
        return f"candidate {st.candidate.version} is not ready"
    if not dry_run:
        tr.promote(t, f"promoted by {command.actor}, skipping the remaining stages", command.actor)
    return None


def _abort(t: Tick, command: Command, *, dry_run: bool) -> str | None:
    problem = _rolling_problem(t)
    if problem:
        return problem
    if not dry_run:
        tr.rollback(t, "Aborted", f"aborted by {command.actor}", actor=command.actor)
    return None


def _retry(t: Tick, command: Command, *, dry_run: bool) -> str | None:
    st = t.status
    if st.phase not in (Phase.ROLLED_BACK, Phase.FAILED):
        return f"only a rolled back or failed rollout can be retried (phase {st.phase})"
    wanted = model_ref(t.spec.model)
    if st.stable is None:
        if not dry_run:
            tr.begin_initialization(t, wanted)
        return None
    if st.candidate is None or wanted != st.candidate:
        return f"spec.model is now {wanted.version}; that starts a new rollout by itself"
    if not dry_run:
        tr.start_rollout(t, st.candidate, f"retry by {command.actor}", command.actor)
    return None


_HANDLERS = {
    CommandVerb.PAUSE: _pause,
    CommandVerb.RESUME: _resume,
    CommandVerb.PROMOTE: _promote,
    CommandVerb.ABORT: _abort,
    CommandVerb.RETRY: _retry,
}
