"""docs/gitops/flux.md's table: the conditions each phase writes, and what kstatus (Flux's
health check for any custom resource) makes of them.

kstatus judges a resource it has no special rules for by ``status.observedGeneration`` and
the conditions ``Reconciling`` and ``Stalled`` alone: observedGeneration behind the
generation or Reconciling=True is InProgress, Stalled=True is Failed, anything else Current
(a Ready=False does not hold a health check). So a phase the table says Flux "waits" on must
write Reconciling=True.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from engine_world import T0, at, make_spec, observe, rolling, settled

from modelrollout import engine
from modelrollout.api.models import ModelRolloutSpec, ModelRolloutStatus, Phase
from modelrollout.engine.types import Observation

SPEC = make_spec()


def kstatus(status: ModelRolloutStatus, generation: int) -> str:
    """kstatus' generic rule (sigs.k8s.io/cli-utils, checkGenericProperties)."""
    if status.observed_generation is None or status.observed_generation < generation:
        return "InProgress"
    conditions = {c.type: c.status for c in status.conditions}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


# (row of the table, spec, stored status, observation, now, phase after the tick,
#  Ready, Reconciling, Stalled, kstatus result)
Row = tuple[
    str, ModelRolloutSpec, ModelRolloutStatus, Observation, datetime, Phase, str, str, str, str
]
ROWS: list[Row] = [
    (
        "Idle (first version initialising)",
        make_spec("1.0.0"),
        ModelRolloutStatus(),
        observe(a=None, b=None, route=None),
        T0,
        Phase.IDLE,
        "False",
        "True",
        "False",
        "InProgress",
    ),
    (
        "Progressing",
        SPEC,
        rolling(1),
        observe(weight=5),
        at(minutes=3),
        Phase.PROGRESSING,
        "False",
        "True",
        "False",
        "InProgress",
    ),
    (
        "Paused (by command)",
        SPEC,
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5),
        at(minutes=3),
        Phase.PAUSED,
        "False",
        "True",
        "False",
        "InProgress",
    ),
    (
        "Paused (by spec.paused)",
        make_spec(paused=True),
        rolling(1, phase=Phase.PAUSED, paused_by="spec", paused_at=at(minutes=2)),
        observe(weight=5),
        at(minutes=3),
        Phase.PAUSED,
        "False",
        "True",
        "False",
        "InProgress",
    ),
    (
        "Succeeded",
        make_spec("1.0.0"),
        settled(),
        observe(b=None),
        at(minutes=3),
        Phase.SUCCEEDED,
        "True",
        "False",
        "False",
        "Current",
    ),
    (
        "RolledBack",
        SPEC,
        rolling(1, phase=Phase.ROLLED_BACK, rollback_reason="analysis failed"),
        observe(b_ready=0),
        at(minutes=30),
        Phase.ROLLED_BACK,
        "False",
        "False",
        "True",
        "Failed",
    ),
    (
        "Failed",
        SPEC,
        rolling(1, phase=Phase.FAILED, rollback_reason="not ready within progressDeadline"),
        observe(b_ready=0),
        at(minutes=30),
        Phase.FAILED,
        "False",
        "False",
        "True",
        "Failed",
    ),
    (
        "invalid spec",
        SPEC,
        rolling(1),
        observe(weight=0, validation_errors=["spec.stages[1]: weight must increase"]),
        at(minutes=3),
        Phase.PROGRESSING,
        "False",
        "False",
        "True",
        "Failed",
    ),
]


@pytest.mark.parametrize(
    ("spec", "status", "obs", "now", "phase", "ready", "reconciling", "stalled", "result"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_each_phase_writes_the_conditions_of_the_flux_table(
    spec: ModelRolloutSpec,
    status: ModelRolloutStatus,
    obs: Observation,
    now: datetime,
    phase: Phase,
    ready: str,
    reconciling: str,
    stalled: str,
    result: str,
) -> None:
    d = engine.decide(spec, status, obs, now)

    assert d.status.phase is phase
    conditions = {c.type: c.status for c in d.status.conditions}
    assert conditions == {"Ready": ready, "Reconciling": reconciling, "Stalled": stalled}
    assert kstatus(d.status, obs.generation) == result


def test_a_paused_rollouts_reconciling_condition_says_paused() -> None:
    d = engine.decide(
        SPEC,
        rolling(1, phase=Phase.PAUSED, paused_by="command", paused_at=at(minutes=2)),
        observe(weight=5),
        at(minutes=3),
    )

    [reconciling] = [c for c in d.status.conditions if c.type == "Reconciling"]
    assert (reconciling.status, reconciling.reason) == ("True", "Paused")


def test_a_spec_the_operator_has_not_observed_is_in_progress_whatever_the_phase() -> None:
    d = engine.decide(make_spec("1.0.0"), settled(), observe(b=None), at(minutes=3))
    assert kstatus(d.status, 1) == "Current"

    # metadata.generation moved on (a new spec committed), the operator has not decided on it
    assert kstatus(d.status, 2) == "InProgress"
