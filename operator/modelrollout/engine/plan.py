"""Read-only questions about (spec, status): what is due, what should run, what should be routed.

Everything here is pure and cheap; the reconciler calls :func:`checks_due` and :func:`gates_due`
before :func:`~modelrollout.engine.machine.decide`, and the engine itself uses the same answers,
so both sides always agree on what "due" means.
"""

from __future__ import annotations

from datetime import datetime

from modelrollout.api.models import (
    TRAFFIC_CHECK_NAME,
    MetricCheck,
    MetricTemplate,
    ModelIdentity,
    ModelRef,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    Stage,
    Verdict,
    WebhookSpec,
    WebhookType,
)
from modelrollout.engine.timing import analysis_interval, gate_interval, stage_duration
from modelrollout.engine.types import (
    EnsureSlot,
    Observation,
    RouteState,
    SetTraffic,
    Slot,
    SlotState,
    other_slot,
)

ROLLING = frozenset({Phase.PROGRESSING, Phase.PROMOTING, Phase.PAUSED})
"""A candidate is deployed and the rollout is under way (possibly paused)."""

ACTIVE = frozenset({Phase.PROGRESSING, Phase.PROMOTING})
"""Rolling and not paused: clocks run, analysis and gates are called."""


def model_ref(model: ModelIdentity) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, uri=model.uri, digest=model.digest)


def stable_slot(status: ModelRolloutStatus) -> Slot:
    return status.stable_slot or "a"


def candidate_slot(status: ModelRolloutStatus) -> Slot:
    return other_slot(stable_slot(status))


def is_last(spec: ModelRolloutSpec, index: int) -> bool:
    return index >= len(spec.stages) - 1


def current_stage(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> Stage | None:
    if status.stage is None or not 0 <= status.stage.index < len(spec.stages):
        return None
    return spec.stages[status.stage.index]


def stage_checks(spec: ModelRolloutSpec, stage_name: str) -> list[MetricCheck]:
    """The checks that apply to a stage (``stages`` omitted = every stage), in spec order,
    and last the built-in ``traffic-split`` (:data:`TRAFFIC_CHECK`): where a stage sends the
    candidate traffic and is analysed anyway, whether that traffic really reached it. A stage
    without checks is judged by time alone, and needs no Prometheus."""
    checks = [m for m in spec.analysis.metrics if m.stages is None or stage_name in m.stages]
    stage = next((s for s in spec.stages if s.name == stage_name), None)
    names = {c.name for c in checks}
    if (
        checks
        and spec.analysis.traffic_check.enabled
        and stage is not None
        and (stage.weight or stage.mirror)
        and TRAFFIC_CHECK.name not in names
    ):
        checks.append(TRAFFIC_CHECK)
    return checks


TRAFFIC_CHECK = MetricCheck(name=TRAFFIC_CHECK_NAME, template=MetricTemplate.TRAFFIC_SPLIT)
"""The built-in check that the split a stage asks for is the split observed."""


# --------------------------------------------------------------------- analysis and timing


def next_analysis_at(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> datetime | None:
    """When the current stage's checks are next due (None: no checks, or no traffic yet)."""
    stage = status.stage
    if stage is None or stage.ready_at is None or not stage_checks(spec, stage.name):
        return None
    base = status.analysis.last_run_at or stage.ready_at
    return base + analysis_interval(spec)


def checks_due(
    spec: ModelRolloutSpec, status: ModelRolloutStatus, now: datetime
) -> list[MetricCheck]:
    """The checks to run now: the current stage's, once the candidate has traffic, not paused,
    one analysis interval after the last run (the first one interval after ``readyAt``)."""
    if status.phase not in ACTIVE or status.stage is None:
        return []
    due_at = next_analysis_at(spec, status)
    if due_at is None or now < due_at:
        return []
    return stage_checks(spec, status.stage.name)


def analysis_passed(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> bool:
    """The stage's analysis allows moving on: no checks apply, or the last run (there was at
    least one) was entirely Successful. Inconclusive, errored or missing results never pass."""
    if status.stage is None:
        return False
    if not stage_checks(spec, status.stage.name):
        return True
    return status.analysis.runs >= 1 and status.analysis.last_verdict is Verdict.SUCCESSFUL


def stage_end(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> datetime | None:
    """When the current stage's duration is over (pause time is excluded by shifting readyAt)."""
    stage = current_stage(spec, status)
    if stage is None or status.stage is None or status.stage.ready_at is None:
        return None
    return status.stage.ready_at + stage_duration(stage)


def stage_complete(spec: ModelRolloutSpec, status: ModelRolloutStatus, now: datetime) -> bool:
    """Duration elapsed and analysis passed: the stage may be left (gates permitting)."""
    end = stage_end(spec, status)
    return end is not None and now >= end and analysis_passed(spec, status)


# ------------------------------------------------------------------------------- gates


def entry_gate_types(spec: ModelRolloutSpec, index: int) -> frozenset[WebhookType]:
    """Gates that must be Open before stage ``index`` gets traffic."""
    types: set[WebhookType] = set()
    if index == 0:
        types.add(WebhookType.PRE_ROLLOUT)
    if is_last(spec, index):
        types.add(WebhookType.CONFIRM_PROMOTION)
    return frozenset(types)


def gates_of(spec: ModelRolloutSpec, types: frozenset[WebhookType]) -> list[WebhookSpec]:
    return [w for w in spec.webhooks if w.type in types]


def pending_gates(
    spec: ModelRolloutSpec, status: ModelRolloutStatus, now: datetime
) -> list[WebhookSpec]:
    """Gates the rollout is waiting on right now, ignoring how recently they were called.

    * The candidate is ready in a stage that has no traffic yet: the gates to enter that stage
      (pre-rollout for stage 0, confirm-promotion for the last one).
    * The stage before the last one is complete: the confirm-promotion gates.
    """
    stage = status.stage
    if status.phase not in ACTIVE or stage is None:
        return []
    if stage.ready_at is None:
        if stage.candidate_ready_at is None:
            return []
        return gates_of(spec, entry_gate_types(spec, stage.index))
    if stage.index == len(spec.stages) - 2 and stage_complete(spec, status, now):
        return gates_of(spec, entry_gate_types(spec, stage.index + 1))
    return []


def next_gate_call_at(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> datetime | None:
    if status.stage is None or status.stage.gates_checked_at is None:
        return None
    return status.stage.gates_checked_at + gate_interval(spec)


def gates_due(
    spec: ModelRolloutSpec, status: ModelRolloutStatus, now: datetime
) -> list[WebhookSpec]:
    """The gate webhooks to call now: :func:`pending_gates`, at most once per gate interval."""
    gates = pending_gates(spec, status, now)
    due_at = next_gate_call_at(spec, status)
    if not gates or (due_at is not None and now < due_at):
        return []
    return gates


# ------------------------------------------------------------------- desired world


def desired_traffic(status: ModelRolloutStatus) -> SetTraffic:
    """What the route should say in this state. The candidate is only named when it gets
    traffic or mirror, so a route never points at a candidate that is not ready."""
    stable = stable_slot(status)
    stage = status.stage
    has_traffic = status.phase in ROLLING and stage is not None and stage.ready_at is not None
    if has_traffic and stage is not None and (stage.weight or stage.mirror):
        return SetTraffic(stable, candidate_slot(status), stage.weight, stage.mirror)
    return SetTraffic(stable, None, 0, 0)


def desired_slots(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> list[EnsureSlot]:
    """The slots that should run, with what. Stable always; the candidate while rolling; the
    model being initialised (kept in ``candidate``) in slot a before there is any stable."""
    if status.stable is None:
        if status.candidate is None:
            return []
        return [EnsureSlot(stable_slot(status), status.candidate, spec.replicas)]
    slots = [EnsureSlot(stable_slot(status), status.stable, spec.replicas)]
    if status.phase in ROLLING and status.candidate is not None:
        slots.append(EnsureSlot(candidate_slot(status), status.candidate, spec.replicas))
    return slots


def route_agrees(route: RouteState | None, desired: SetTraffic) -> bool:
    """The route read back serves ``desired``, judged by who it points at: every share of live
    traffic goes to the slot the engine asked for, in the amount asked for, and the mirror
    copies to the candidate slot. A share to any other Service (the other slot, a Service
    that is no slot) is a disagreement however the numbers look. An unread route, or one
    whose parents have not accepted it yet, never agrees."""
    if route is None or not route.found or route.pending is not None:
        return False
    return _shares(route) == wanted_shares(desired) and _mirror_of(route) == _wanted_mirror(
        desired
    )


def wanted_shares(desired: SetTraffic) -> dict[str, int]:
    """Percent of live traffic per slot that ``desired`` asks for (zero shares left out)."""
    weight = desired.candidate_weight if desired.candidate_slot else 0
    wanted: dict[str, int] = {}
    for slot, percent in ((desired.stable_slot, 100 - weight), (desired.candidate_slot, weight)):
        if slot is not None and percent:
            wanted[slot] = wanted.get(slot, 0) + percent
    return wanted


def _shares(route: RouteState) -> dict[str, int]:
    """Percent per slot the route sends; a Service that is no slot counts under its own name
    (``svc:<name>``), so it can never stand in for a slot."""
    got: dict[str, int] = {}
    for share in route.shares:
        if share.percent:
            key = share.slot if share.slot is not None else f"svc:{share.service}"
            got[key] = got.get(key, 0) + share.percent
    return got


def misroutes(route: RouteState, status: ModelRolloutStatus) -> bool:
    """Whether the route sends live traffic (or the mirror) to other pods than ``status``
    asks for. Unlike :func:`route_agrees`, a role Service counts as the slot it selects, so
    a route written with ``<name>-stable`` is rewritten to the slots without being reported
    as a misroute: its traffic reached the right pods."""
    desired = desired_traffic(status)
    roles = role_slots(status)
    effective: dict[str, int] = {}
    for share in route.shares:
        slot = share.slot if share.slot is not None else roles.get(share.role or "")
        if share.percent:
            key = slot if slot is not None else f"svc:{share.service}"
            effective[key] = effective.get(key, 0) + share.percent
    return effective != wanted_shares(desired) or _mirror_of(route) != _wanted_mirror(desired)


def describe_traffic(desired: SetTraffic) -> str:
    """``slot a 95%, slot b 5%, no mirror``: what the engine wants, in slot terms."""
    shares = wanted_shares(desired)
    text = ", ".join(f"slot {slot} {percent}%" for slot, percent in shares.items())
    mirror, target = _wanted_mirror(desired)
    return text + (f", mirror {mirror}% to slot {target}" if mirror else ", no mirror")


def role_slots(status: ModelRolloutStatus) -> dict[str, Slot]:
    """Which slot each role Service selects: ``stable`` the stable slot; ``canary`` the
    candidate's slot while a candidate is rolling, the stable slot otherwise (so callers of
    ``<name>-canary`` are always answered)."""
    stable = stable_slot(status)
    rolling = status.phase in ROLLING and status.candidate is not None
    return {"stable": stable, "canary": candidate_slot(status) if rolling else stable}


def _mirror_of(route: RouteState) -> tuple[int, str | None]:
    return (route.mirror, route.mirror_slot) if route.mirror else (0, None)


def _wanted_mirror(desired: SetTraffic) -> tuple[int, str | None]:
    if desired.candidate_slot is None or not desired.mirror:
        return (0, None)
    return (desired.mirror, desired.candidate_slot)


# ------------------------------------------------------------------------ readiness


def slot_of(obs: Observation, slot: Slot) -> SlotState:
    return obs.slots.get(slot) or SlotState()


def runs_version(state: SlotState, version: str) -> bool:
    return state.exists and state.version == version


def ready_with(obs: Observation, slot: Slot, version: str) -> bool:
    """Every replica of the slot is ready and runs ``version``."""
    state = slot_of(obs, slot)
    return state.is_ready and runs_version(state, version)


def serving(obs: Observation, slot: Slot, version: str) -> bool:
    """At least one ready replica runs ``version``: traffic sent there is answered."""
    state = slot_of(obs, slot)
    return runs_version(state, version) and state.ready > 0
