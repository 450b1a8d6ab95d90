"""Random sequences of events against the engine and a fake world.

Whatever happens (time passing, pods breaking, verdicts, gate answers, commands, pauses, new
or reverted versions, hand edits of the route), the engine never:

* gives a candidate traffic or mirror while its slot is not ready with the candidate version;
* promotes on its own without a Successful analysis of the last stage;
* scales a slot down while the route it leaves still sends it traffic;
* breaks the audit chain, or changes anything when asked again with the same input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from engine_world import V1, World, dump, make_spec, settled
from hypothesis import event, given, settings
from hypothesis import strategies as st

from modelrollout import engine
from modelrollout.api.models import MetricResult, ModelRolloutSpec, ModelRolloutStatus, Verdict
from modelrollout.audit import verify
from modelrollout.engine.tick import OPERATOR
from modelrollout.engine.types import (
    Command,
    CommandVerb,
    Decision,
    EmitEvent,
    GateResult,
    Notify,
    Observation,
    ScaleSlot,
    SetTraffic,
    Slot,
    SlotState,
    other_slot,
)
from tests.unit.route_states import serving

STAGES = [
    {"name": "shadow", "mirror": 100, "duration": "2m"},
    {"name": "canary", "weight": 20, "duration": "2m"},
    {"name": "full", "weight": 100},
]


def spec_for(version: str, paused: bool, policy: str, gates: bool) -> ModelRolloutSpec:
    webhooks = (
        [
            {"name": "smoke", "type": "pre-rollout", "url": "http://gate.test/a"},
            {"name": "approve", "type": "confirm-promotion", "url": "http://gate.test/b"},
        ]
        if gates
        else []
    )
    return make_spec(
        version,
        paused=paused,
        stages=STAGES,
        webhooks=webhooks,
        progressDeadline="5m",
        analysis={
            "interval": "1m",
            "failureLimit": 1,
            "inconclusiveLimit": 2,
            "errorLimit": 2,
            "onInconclusive": policy,
            "metrics": [{"name": "error-rate", "template": "error-rate", "max": 0.01}],
        },
    )


@dataclass
class Knobs:
    version: str = "2.0.0"
    paused: bool = False
    verdict: Verdict = Verdict.SUCCESSFUL
    gate: GateResult = GateResult.OPEN
    outage: bool = False  # the candidate slot's pods are not ready


WAIT = st.tuples(st.just("wait"), st.integers(min_value=1, max_value=400))
# Time passing and good news are the most common, so that rollouts get far enough to promote.
EVENTS = st.one_of(
    *[WAIT] * 6,
    st.tuples(st.just("verdict"), st.sampled_from([Verdict.SUCCESSFUL] * 3 + list(Verdict))),
    st.tuples(st.just("gate"), st.sampled_from([GateResult.OPEN] * 2 + list(GateResult))),
    st.tuples(st.just("outage"), st.booleans()),
    st.tuples(st.just("paused"), st.booleans()),
    st.tuples(st.just("version"), st.sampled_from(["2.0.0", "2.0.0", "3.0.0", "1.0.0"])),
    st.tuples(st.just("command"), st.sampled_from(list(CommandVerb))),
    st.tuples(st.just("drift"), st.sampled_from([0, 5, 20, 100])),
    st.tuples(st.just("misroute"), st.just(0)),
)


def observe(
    world: World,
    spec: ModelRolloutSpec,
    status: ModelRolloutStatus,
    knobs: Knobs,
    command: Command | None,
) -> Observation:
    checks = engine.checks_due(spec, status, world.now)
    gates = engine.gates_due(spec, status, world.now)
    slots: dict[Slot, SlotState] = {"a": world.slot_state("a"), "b": world.slot_state("b")}
    candidate = other_slot(status.stable_slot or "a")
    if knobs.outage:
        slots[candidate] = replace(slots[candidate], ready=0)
    return Observation(
        generation=1,
        slots=slots,
        route=world.route,
        analysis=[MetricResult(name=c.name, verdict=knobs.verdict, value=0.001) for c in checks]
        or None,
        gates={g.name: knobs.gate for g in gates},
        command=command,
    )


def check_invariants(
    spec: ModelRolloutSpec,
    before: ModelRolloutStatus,
    obs: Observation,
    now: datetime,
    d: Decision,
) -> None:
    candidate = d.status.candidate
    # 1. Traffic or mirror only to a ready candidate running the candidate version.
    for action in d.actions:
        if isinstance(action, SetTraffic) and (action.candidate_weight or action.mirror):
            assert action.candidate_slot is not None and candidate is not None
            state = obs.slots[action.candidate_slot]
            assert state.version == candidate.version and state.ready > 0, (action, state)
            if before.stage is None or before.stage.ready_at is None:
                assert state.is_ready, (action, state)  # first traffic: fully ready

    # 2. No promotion by the operator without a Successful run in the last stage.
    seqs = {e.seq for e in before.history}
    for entry in d.status.history:
        if entry.seq in seqs or entry.event != "Promoted" or entry.actor != OPERATOR:
            continue
        assert entry.from_stage == "full"
        assert entry.metrics and all(m.verdict is Verdict.SUCCESSFUL for m in entry.metrics)

    # 3. A slot is only scaled down after the route stopped sending it traffic.
    routed_to: set[str] = {"a", "b"}
    if obs.route is not None:
        routed_to = {s.slot for s in obs.route.shares if s.percent and s.slot is not None}
        if obs.route.mirror and obs.route.mirror_slot is not None:
            routed_to.add(obs.route.mirror_slot)
    for index, action in enumerate(d.actions):
        if isinstance(action, ScaleSlot) and action.replicas == 0 and action.slot in routed_to:
            earlier = [a for a in d.actions[:index] if isinstance(a, SetTraffic)]
            assert earlier and earlier[-1].stable_slot != action.slot
            assert earlier[-1].candidate_slot != action.slot

    # 4. The audit chain holds; 5. deciding again changes nothing.
    assert verify(d.status.history) == []
    again = engine.decide(spec, d.status, obs, now)
    assert dump(again.status) == dump(d.status)
    assert not [a for a in again.actions if isinstance(a, (EmitEvent, Notify))]
    if d.requeue_after is not None:
        assert timedelta(seconds=1) <= d.requeue_after <= timedelta(minutes=1)
    # every time to look again says what it is for, and only then
    assert (d.requeue_after is None) == (d.requeue_reason is None), d.requeue_reason


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(EVENTS, min_size=10, max_size=60),
    policy=st.sampled_from(["Hold", "Rollback"]),
    gates=st.booleans(),
)
def test_random_event_sequences_keep_the_invariants(
    events: list[tuple[str, Any]], policy: str, gates: bool
) -> None:
    world = World()
    world.slots["a"].version, world.slots["a"].replicas = "1.0.0", 2
    world.slots["a"].ready_at = world.now
    world.route = serving()
    world.route_slots = ("a", None)
    status = settled(V1)
    knobs = Knobs()

    for number, (kind, value) in enumerate(events):
        command = None
        if kind == "wait":
            world.now += timedelta(seconds=value)
        elif kind == "drift":
            world.route = serving(value, stable=world.route_slots[0] if world.route_slots else "a")
        elif kind == "misroute":  # the route re-applied as first written: all to slot a
            world.route = serving()
        elif kind == "command":
            command = Command(verb=value, id=f"c{number}", actor="tester")
        else:
            setattr(knobs, kind, value)
        spec = spec_for(knobs.version, knobs.paused, policy, gates)
        # A few reconciles per event, as the daemon would do at the requeue times.
        for _ in range(3):
            obs = observe(world, spec, status, knobs, command)
            decision = engine.decide(spec, status, obs, world.now)
            check_invariants(spec, status, obs, world.now, decision)
            world.apply(decision.actions)
            status = decision.status
            world.now += decision.requeue_after or timedelta(seconds=30)
    for entry in status.history:
        event(entry.event if entry.actor != OPERATOR else f"{entry.event} (operator)")
