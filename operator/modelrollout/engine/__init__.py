"""The pure rollout engine: ``decide(spec, status, observation, now) -> Decision``.

No kopf, no HTTP, no clock, no randomness: the reconciler observes, asks :func:`checks_due`
and :func:`gates_due` what to run, runs it, and hands everything to :func:`decide`, which
returns the new status, the ordered actions and when to look again.

Semantics
---------
Slots. Two Deployments, ``a`` and ``b``; ``status.stableSlot`` runs the stable version, the
other one the candidate. Roles are not part of the pod template, so promotion switches roles
without restarting the candidate's pods. Every tick re-asserts (EnsureSlot) the slots that
should run and scales down (ScaleSlot 0) a slot that should not but still has replicas.

First version (``status.stable`` empty): slot a gets the model and the route points at it;
phase Idle until slot a is ready, then Succeeded ("Initialized"). Past progressDeadline it is
Failed, but slot a keeps running (nothing else serves) and readiness later still succeeds.

Rollout. ``spec.model`` (name, version, uri, digest) differing from the stable starts one:
the candidate slot gets the model, phase Progressing, stage 0. Other spec edits are not a
rollout (replicas and template reach the running slots through EnsureSlot). A stage gets its
traffic only once the candidate is fully ready with the candidate version, and for stage 0
once the pre-rollout gates answered Open (entering the last stage also needs the
confirm-promotion gates). Waiting for readiness longer than progressDeadline (counted from the
stage start, i.e. rollout start, supersede or retry) fails the rollout: 100% stable, candidate
scaled to 0, phase Failed. If a candidate that has traffic loses every ready replica, its
traffic goes back to stable and the stage waits for readiness again; if it is only partly
ready it keeps its traffic but the rollout does not move on.

Analysis. A check runs in the stages it names (all when ``stages`` is omitted), one interval
after readyAt and then every interval, never while paused. Results are folded into
``status.analysis`` (see :mod:`.analysis` for the counters and limits); failures past
failureLimit roll back; inconclusive results or errors past their limits apply onInconclusive
(Hold: stay, Stalled; or Rollback). A due check that reported nothing is Inconclusive. A gate
timeout counts as an inconclusive result. A stage is complete when its duration has elapsed
since readyAt (pause time excluded) and, if checks apply, at least one run happened and the
last one was all Successful; then the rollout moves to the next stage, or promotes from the
last one (traffic switched to the candidate slot first, then the old stable scaled down).

Rollback (breach, abort, deadline, policy): 100% stable first, then the candidate scaled to 0,
then the record (phase RolledBack, or Failed for the deadline). Terminal until spec.model
changes (a new rollout; back to the stable version is simply Succeeded) or a retry command
(same candidate, from stage 0).

Mid-rollout spec.model changes: a new version supersedes the candidate (100% stable first,
candidate slot redeployed, stage 0, a pause stays in force); the stable version again abandons
the candidate (phase Succeeded: the desired version serves). spec.stages edited mid-rollout:
the current stage is followed by name; if it was removed the rollout restarts at stage 0.

Pause. spec.paused or a pause command: phase Paused, traffic frozen (except that a candidate
without any ready replica loses its traffic), no analysis, no gates, no deadline, stage clock
stopped; resuming (spec.paused false for a spec pause, a resume command for a command pause)
moves readyAt (or startedAt while waiting for readiness) and the analysis schedule forward by
the paused time. A resume command while spec.paused is still true hands the pause over to spec.

Commands are handled once per id (``status.lastCommand``), before the phase's flow: pause,
resume, promote (candidate must be ready; skips the remaining stages), abort (rollback,
"aborted by <actor>"), retry (RolledBack/Failed only). One that does not apply is recorded
as ignored with the reason (audit entry and Normal event). Commands wait while the rollout is
held (invalid spec or routing error), as do all workload and traffic actions.

Conditions and message: see :mod:`.conditions`. History: every transition appends a sealed
entry to the hash-chained audit trail (:mod:`modelrollout.audit`); a tick that changes
nothing appends nothing, so deciding twice on the same input is idempotent.

requeue_after: the time until the engine must look again (stage end, next analysis, gate call,
deadline), at most the analysis interval, a readiness poll while waiting for it (5 s, 30 s while
the Deployments are watched: a fallback, the operator wakes a rollout when its Deployments
change), 1 s for the route to converge, None when settled and the route agrees. A promotion's
route is read back before its status is written (:func:`read_back`): Ready turns True in that
one write. requeue_reason says which of these it is (a :class:`~modelrollout.engine.types.Wake`;
the operator counts reconciles by it).
"""

from modelrollout.engine.machine import decide, invalid_spec_status, read_back
from modelrollout.engine.plan import (
    checks_due,
    desired_slots,
    desired_traffic,
    gates_due,
    role_slots,
    route_agrees,
    stage_checks,
)

__all__ = [
    "checks_due",
    "decide",
    "desired_slots",
    "desired_traffic",
    "gates_due",
    "invalid_spec_status",
    "read_back",
    "role_slots",
    "route_agrees",
    "stage_checks",
]
