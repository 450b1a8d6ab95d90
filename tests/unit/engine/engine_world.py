"""Builders and a fake world for the engine tests: specs, statuses, observations, and a tiny
simulation that carries out actions the way the real reconciler and controllers would."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelrollout import engine
from modelrollout.api.models import (
    AnalysisStatus,
    MetricResult,
    ModelRef,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    StageStatus,
    Verdict,
)
from modelrollout.engine.types import (
    Action,
    Command,
    CommandVerb,
    Decision,
    EmitEvent,
    EnsureSlot,
    GateResult,
    Notify,
    Observation,
    RouteState,
    ScaleSlot,
    SetTraffic,
    Slot,
    SlotState,
)
from tests.unit.route_states import serving

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(seconds=seconds, minutes=minutes)


def ref(version: str) -> ModelRef:
    return ModelRef(name="fraud", version=version, uri=f"s3://models/fraud/{version}")


V1, V2, V3 = ref("1.0.0"), ref("2.0.0"), ref("3.0.0")

STAGES = [
    {"name": "shadow", "mirror": 100, "duration": "10m"},
    {"name": "canary-5", "weight": 5, "duration": "10m"},
    {"name": "canary-25", "weight": 25, "duration": "20m"},
    {"name": "full", "weight": 100},
]
ERROR_RATE = {"name": "error-rate", "template": "error-rate", "max": 0.01}


def make_spec(version: str = "2.0.0", **extra: Any) -> ModelRolloutSpec:
    raw: dict[str, Any] = {
        "model": {"name": "fraud", "version": version, "uri": f"s3://models/fraud/{version}"},
        "replicas": 2,
        "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
        "stages": STAGES,
        "analysis": {"interval": "1m", "metrics": [ERROR_RATE]},
        "progressDeadline": "10m",
    }
    raw.update(extra)
    # The built-in traffic-split check has cases of its own (test_engine_plan.py, the table's
    # "traffic:" rows, which enable it); elsewhere only the checks a case names are due.
    raw["analysis"] = {"trafficCheck": {"enabled": False}, **raw["analysis"]}
    return ModelRolloutSpec.model_validate(raw)


def stage(
    index: int, *, started: datetime = T0, ready: datetime | None = T0, **extra: Any
) -> StageStatus:
    s = STAGES[index]
    return StageStatus(
        index=index,
        name=str(s["name"]),
        weight=int(s.get("weight", 0)),  # type: ignore[call-overload]
        mirror=int(s.get("mirror", 0)),  # type: ignore[call-overload]
        started_at=started,
        ready_at=ready,
        candidate_ready_at=ready,
        **extra,
    )


def settled(stable: ModelRef = V1, slot: Slot = "a", **extra: Any) -> ModelRolloutStatus:
    """Succeeded: ``stable`` serves 100% from ``slot``."""
    fields: dict[str, Any] = {
        "phase": Phase.SUCCEEDED,
        "stable": stable,
        "stable_version": stable.version,
        "stable_slot": slot,
        "observed_generation": 1,
    }
    fields.update(extra)
    return ModelRolloutStatus(**fields)


def rolling(
    index: int = 1,
    *,
    started: datetime = T0,
    ready: datetime | None = T0,
    analysis: AnalysisStatus | None = None,
    candidate: ModelRef = V2,
    **extra: Any,
) -> ModelRolloutStatus:
    """Progressing at stage ``index``: V1 stable in slot a, ``candidate`` in slot b."""
    fields: dict[str, Any] = {
        "phase": Phase.PROGRESSING,
        "stable": V1,
        "stable_version": V1.version,
        "stable_slot": "a",
        "candidate": candidate,
        "candidate_version": candidate.version,
        "rollout_started_at": started,
        "stage": stage(index, started=started, ready=ready),
        "analysis": analysis or AnalysisStatus(),
        "observed_generation": 1,
    }
    fields.update(extra)
    return ModelRolloutStatus(**fields)


def slot(version: str | None, replicas: int = 2, ready: int | None = None) -> SlotState:
    if version is None:
        return SlotState()
    ready = replicas if ready is None else ready
    return SlotState(
        exists=True,
        version=version,
        desired=replicas,
        ready=ready,
        updated=replicas,
        observed_current=True,
    )


def route(weight: int = 0, mirror: int = 0, stable: Slot = "a") -> RouteState:
    return serving(weight, mirror, stable=stable)


def observe(
    a: str | None = "1.0.0",
    b: str | None = "2.0.0",
    *,
    b_ready: int | None = None,
    a_ready: int | None = None,
    weight: int = 0,
    mirror: int = 0,
    stable: Slot = "a",
    **extra: Any,
) -> Observation:
    fields: dict[str, Any] = {
        "generation": 1,
        "slots": {"a": slot(a, ready=a_ready), "b": slot(b, ready=b_ready)},
        "route": route(weight, mirror, stable),
    }
    fields.update(extra)
    return Observation(**fields)


def result(verdict: Verdict, value: float | None = 0.001, name: str = "error-rate") -> MetricResult:
    return MetricResult(name=name, verdict=verdict, value=value, bound="<= 0.01")


def command(verb: str, cid: str = "c1", actor: str = "alice") -> Command:
    return Command(verb=CommandVerb(verb), id=cid, actor=actor)


def new_events(before: ModelRolloutStatus, after: ModelRolloutStatus) -> list[str]:
    seqs = {e.seq for e in before.history}
    return [e.event for e in after.history if e.seq not in seqs]


def effects(d: Decision) -> list[Action]:
    """The workload and traffic actions, without events and notifications."""
    return [a for a in d.actions if not isinstance(a, (EmitEvent, Notify))]


def dump(status: ModelRolloutStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True)


def restart(status: ModelRolloutStatus) -> ModelRolloutStatus:
    """What an operator restart sees: the status as written to and read back from the apiserver."""
    return ModelRolloutStatus.model_validate_json(status.model_dump_json(by_alias=True))


# --------------------------------------------------------------------------- fake world


@dataclass
class FakeSlot:
    version: str | None = None
    replicas: int = 0
    ready: int = 0
    ready_at: datetime | None = None  # when the pods of the current version are up


@dataclass
class World:
    """Deployments become ready ``startup`` after they are (re)configured; the route is what
    was last set; analysis verdicts come from ``verdict(stage, now)``."""

    now: datetime = T0
    startup: timedelta = timedelta(seconds=30)
    slots: dict[Slot, FakeSlot] = field(default_factory=lambda: {"a": FakeSlot(), "b": FakeSlot()})
    route: RouteState | None = None
    route_slots: tuple[Slot, Slot | None] | None = None
    gate: GateResult = GateResult.OPEN
    log: list[Action] = field(default_factory=list)

    def slot_state(self, name: Slot) -> SlotState:
        s = self.slots[name]
        if s.version is None:
            return SlotState()
        up = s.ready_at is not None and self.now >= s.ready_at
        return SlotState(
            exists=True,
            version=s.version,
            desired=s.replicas,
            ready=s.replicas if up else 0,
            updated=s.replicas,
            observed_current=True,
        )

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            self.log.append(action)
            if isinstance(action, EnsureSlot):
                s = self.slots[action.slot]
                if s.version != action.model.version or s.replicas != action.replicas:
                    if s.version != action.model.version or s.replicas < action.replicas:
                        s.ready_at = self.now + self.startup
                    s.version, s.replicas = action.model.version, action.replicas
            elif isinstance(action, ScaleSlot):
                self.slots[action.slot].replicas = action.replicas
                if action.replicas == 0:
                    self.slots[action.slot].ready_at = None
            elif isinstance(action, SetTraffic):
                w = action.candidate_weight if action.candidate_slot else 0
                m = action.mirror if action.candidate_slot else 0
                self.route = route(w, m, action.stable_slot)
                self.route_slots = (action.stable_slot, action.candidate_slot)

    def observation(
        self,
        spec: ModelRolloutSpec,
        status: ModelRolloutStatus,
        verdict: Verdict = Verdict.SUCCESSFUL,
        command: Command | None = None,
    ) -> Observation:
        checks = engine.checks_due(spec, status, self.now)
        gates = engine.gates_due(spec, status, self.now)
        return Observation(
            generation=1,
            slots={"a": self.slot_state("a"), "b": self.slot_state("b")},
            route=self.route,
            analysis=[MetricResult(name=c.name, verdict=verdict, value=0.001) for c in checks]
            or None,
            gates={g.name: self.gate for g in gates},
            command=command,
        )


def step(
    world: World,
    spec: ModelRolloutSpec,
    status: ModelRolloutStatus,
    verdict: Verdict = Verdict.SUCCESSFUL,
    command: Command | None = None,
) -> Decision:
    """One reconcile: observe, decide, apply, then move the clock to the requeue time."""
    obs = world.observation(spec, status, verdict, command)
    decision = engine.decide(spec, status, obs, world.now)
    world.apply(decision.actions)
    world.now += decision.requeue_after or timedelta(seconds=30)
    return decision
