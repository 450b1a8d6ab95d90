"""Whole rollouts against a fake world: decide, carry out the actions, move the clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from engine_world import (
    ERROR_RATE,
    T0,
    V1,
    V2,
    World,
    at,
    dump,
    make_spec,
    observe,
    restart,
    rolling,
    route,
    step,
)

from modelrollout import engine
from modelrollout.api.models import ModelRolloutSpec, ModelRolloutStatus, Phase, Verdict
from modelrollout.audit import verify
from modelrollout.engine.types import Action, EnsureSlot, ScaleSlot, SetTraffic, Wake
from tests.unit.route_states import serving

STAGE_ORDER = ["shadow", "canary-5", "canary-25", "full"]
MAX_TICKS = 2000


def settle(
    world: World, spec: ModelRolloutSpec, status: ModelRolloutStatus, **kw: Any
) -> ModelRolloutStatus:
    """Run ticks until the engine has nothing left to look at."""
    for _ in range(MAX_TICKS):
        decision = step(world, spec, status, **kw)
        status = decision.status
        if decision.requeue_after is None:
            return status
    raise AssertionError(f"no settled state after {MAX_TICKS} ticks: {status.message}")


def initialized(world: World) -> ModelRolloutStatus:
    status = settle(world, make_spec("1.0.0"), ModelRolloutStatus())
    assert (status.phase, status.stable, status.stable_slot) == (Phase.SUCCEEDED, V1, "a")
    assert [e.event for e in status.history] == ["Initialized"]
    return status


def stages_entered(status: ModelRolloutStatus) -> list[str]:
    return [e.to_stage or "" for e in status.history if e.event == "StageEntered"]


class CheckingWorld(World):
    """A World that also checks, when a route gives a slot traffic, that the slot is ready."""

    violations: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.violations = []
        self.configured: dict[str, int] = {"a": 0, "b": 0}

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SetTraffic) and action.candidate_slot is not None:
                state = self.slot_state(action.candidate_slot)
                if (action.candidate_weight or action.mirror) and not state.is_ready:
                    self.violations.append(f"{self.now}: {action} while {state}")
            if isinstance(action, EnsureSlot):
                current = self.slots[action.slot]
                if current.version != action.model.version:
                    self.configured[action.slot] += 1
        super().apply(actions)


def test_first_version_then_full_rollout_to_promotion() -> None:
    world = CheckingWorld()
    status = initialized(world)
    spec = make_spec("2.0.0")

    started = world.now
    status = settle(world, spec, status)

    assert status.phase is Phase.SUCCEEDED
    assert (status.stable, status.stable_slot, status.candidate) == (V2, "b", None)
    assert stages_entered(status) == STAGE_ORDER  # no skip, no repeat
    events = [e.event for e in status.history]
    assert events.count("Promoted") == 1 and "RolledBack" not in events
    assert verify(status.history) == []
    # Each stage lasted at least its duration, counted from the moment it had traffic.
    entered = {e.to_stage: e.time for e in status.history if e.event == "StageEntered"}
    ready = next(e.time for e in status.history if e.event == "CandidateReady")
    assert entered["canary-5"] - ready >= timedelta(minutes=10)
    assert entered["canary-25"] - entered["canary-5"] >= timedelta(minutes=10)
    assert entered["full"] - entered["canary-25"] >= timedelta(minutes=20)
    promoted = next(e for e in status.history if e.event == "Promoted")
    assert promoted.metrics and all(m.verdict is Verdict.SUCCESSFUL for m in promoted.metrics)
    assert promoted.time - started < timedelta(minutes=45)
    # The world ends as the status says: slot b serves everything, slot a is scaled down,
    # and slot b was configured with 2.0.0 once (promotion restarted no pod).
    assert world.route_slots == ("b", None) and world.route is not None
    assert world.route.percent_to("b") == 100
    assert world.slots["a"].replicas == 0 and world.slots["b"].version == "2.0.0"
    assert world.configured["b"] == 1
    assert world.violations == []  # no traffic to a slot that was not ready


def test_rollback_walk_stops_at_the_breach() -> None:
    world = CheckingWorld()
    status = initialized(world)
    spec = make_spec("2.0.0")

    while not (status.stage and status.stage.name == "canary-25" and status.stage.ready_at):
        status = step(world, spec, status).status
        assert world.now - T0 < timedelta(hours=2)
    status = settle(world, spec, status, verdict=Verdict.FAILED)

    assert status.phase is Phase.ROLLED_BACK
    assert stages_entered(status) == STAGE_ORDER[:3]
    assert "error-rate" in (status.rollback_reason or "")
    assert (status.stable, status.stable_slot) == (V1, "a")
    assert world.route_slots == ("a", None) and world.route is not None
    assert (world.route.percent_to("a"), world.route.mirror) == (100, 0)
    assert world.slots["b"].replicas == 0 and world.slots["a"].replicas == 2
    # Traffic left the candidate before it was scaled down.
    log = world.log
    at_25 = max(i for i, a in enumerate(log) if a == SetTraffic("a", "b", 25, 0))
    to_stable = log.index(SetTraffic("a", None, 0, 0), at_25)
    scaled = log.index(ScaleSlot("b", 0), at_25)
    assert at_25 < to_stable < scaled
    assert verify(status.history) == []
    assert world.violations == []  # no traffic to a slot that was not ready

    # Terminal: more ticks change nothing.
    again = step(world, spec, status)
    assert again.status.history == status.history and again.requeue_after is None


def test_restart_mid_stage_continues_the_same_stage() -> None:
    """An operator restart re-reads the status from its JSON: the rollout neither repeats nor
    skips a stage, and the audit chain still verifies."""
    world = CheckingWorld()
    status = initialized(world)
    spec = make_spec("2.0.0")

    def three_minutes_into_canary5(s: ModelRolloutStatus) -> bool:
        stage = s.stage
        if stage is None or stage.name != "canary-5" or stage.ready_at is None:
            return False
        return world.now - stage.ready_at > timedelta(minutes=3)

    while not three_minutes_into_canary5(status):
        status = step(world, spec, status).status
    before = status
    status = restart(status)
    assert status == before

    decision = step(world, spec, status)
    assert decision.status.stage is not None and decision.status.stage.name == "canary-5"
    assert decision.status.stage.ready_at == before.stage.ready_at  # type: ignore[union-attr]
    assert decision.status.history == before.history

    status = settle(world, spec, decision.status)
    assert stages_entered(status) == STAGE_ORDER
    assert status.phase is Phase.SUCCEEDED and verify(status.history) == []


def test_restart_at_every_tick_changes_nothing() -> None:
    """The whole rollout with the status round-tripped through JSON at every tick gives the
    same audit trail, entry for entry (times, hashes), as without."""

    def run(round_trip: bool) -> ModelRolloutStatus:
        world = World()
        status = ModelRolloutStatus()
        for spec in (make_spec("1.0.0"), make_spec("2.0.0")):
            for _ in range(MAX_TICKS):
                decision = step(world, spec, restart(status) if round_trip else status)
                status = decision.status
                if decision.requeue_after is None:
                    break
        return status

    plain, restarted = run(False), run(True)
    assert plain.phase is Phase.SUCCEEDED
    assert [e.hash for e in restarted.history] == [e.hash for e in plain.history]


def test_paused_walk_takes_longer_by_the_pause() -> None:
    world = CheckingWorld()
    status = initialized(world)
    spec = make_spec("2.0.0")
    paused = make_spec("2.0.0", paused=True)

    while not (status.stage and status.stage.name == "canary-5"):
        status = step(world, spec, status).status
    entered = world.now
    pause_started = world.now + timedelta(minutes=2)
    while world.now < pause_started:
        status = step(world, spec, status).status
    for _ in range(30):  # 30 minutes paused: a paused rollout looks once per interval
        status = step(world, paused, status).status
        assert status.phase is Phase.PAUSED and status.stage.name == "canary-5"  # type: ignore[union-attr]
    status = settle(world, spec, status)

    canary25 = next(e.time for e in status.history if e.to_stage == "canary-25")
    assert canary25 - entered >= timedelta(minutes=10 + 29)
    assert stages_entered(status) == STAGE_ORDER and status.phase is Phase.SUCCEEDED
    assert world.violations == []  # no traffic to a slot that was not ready


def test_a_wake_up_with_nothing_new_changes_nothing_in_the_status() -> None:
    """Every status change is an apiserver write: the daemon waking up inside a stage, with
    the same observation and no analysis due, must leave the status byte-identical (a
    countdown in the message once cost a write per wake-up and rollout)."""
    spec = make_spec(analysis={"interval": "2s", "metrics": []})
    status = engine.decide(spec, rolling(1), observe(weight=5), at(1)).status
    for seconds in (3, 5, 7, 61, 599):
        later = engine.decide(spec, status, observe(weight=5), at(seconds))
        assert dump(later.status) == dump(status), f"the status changed at t={seconds}s"
    assert "stage ends at 2025-03-01T12:10:00Z" in status.message


def test_decide_leaves_its_input_alone_while_sharing_sealed_entries() -> None:
    """The working copy shares the (sealed, never edited) audit entries with the input: a whole
    walk must leave every input status exactly as it was, and every chain intact."""
    spec = make_spec(analysis={"interval": "2s", "metrics": []})
    status = rolling(1)
    seconds = 0
    for _ in range(6):
        before = dump(status)
        decision = engine.decide(spec, status, observe(weight=5), at(seconds))
        assert dump(status) == before
        assert verify(decision.status.history) == []
        status, seconds = decision.status, seconds + 400
    assert len(status.history) >= 2


@pytest.mark.parametrize("interval", ["1m", "15m"], ids=["analysis-first", "stage-end-first"])
@pytest.mark.parametrize("verdict_at", [None, "canary-25"], ids=["promoted", "rolled-back"])
def test_a_route_read_back_decides_what_the_next_look_would(
    verdict_at: str | None, interval: str
) -> None:
    """After every route write of a whole rollout, read_back (the route as written) gives the
    status and the next look that a tick at the same moment would decide: a promotion's Ready
    in its own status write, and no look a second later just to read the route back."""
    world = World()
    status = initialized(world)
    spec = make_spec("2.0.0", analysis={"interval": interval, "metrics": [ERROR_RATE]})
    read_backs = 0
    for _ in range(MAX_TICKS):
        stage = status.stage.name if status.stage else None
        verdict = (
            Verdict.FAILED if verdict_at is not None and stage == verdict_at else Verdict.SUCCESSFUL
        )
        obs = world.observation(spec, status, verdict)
        decision = engine.decide(spec, status, obs, world.now)
        world.apply(decision.actions)
        if any(isinstance(a, SetTraffic) for a in decision.actions):
            read = engine.read_back(spec, decision, replace(obs, route=world.route), world.now)
            assert read.requeue_reason is not Wake.CONVERGE  # the write took: nothing to re-read
            if read is not decision:
                read_backs += 1
                next_look = engine.decide(
                    spec, decision.status, world.observation(spec, decision.status), world.now
                )
                assert dump(read.status) == dump(next_look.status)
                assert (read.requeue_after, read.requeue_reason) == (
                    next_look.requeue_after,
                    next_look.requeue_reason,
                )
                assert read.actions == decision.actions
            decision = read
        status = decision.status
        if decision.requeue_after is None:
            break
        world.now += decision.requeue_after
    else:
        raise AssertionError("never settled")
    assert status.phase is (Phase.SUCCEEDED if verdict_at is None else Phase.ROLLED_BACK)
    assert read_backs >= 3  # shadow, the canaries, full, and the promotion or rollback
    if verdict_at is None:
        ready = next(c for c in status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("True", "Succeeded")


def test_a_promotions_read_back_leaves_the_decision_itself_unedited() -> None:
    world = World()
    status = initialized(world)
    spec = make_spec("2.0.0")
    for _ in range(MAX_TICKS):
        obs = world.observation(spec, status)
        decision = engine.decide(spec, status, obs, world.now)
        if decision.status.phase is Phase.SUCCEEDED:
            # promoted while the route still sends 25% (a promote command, say): as decided,
            # the route is not read back yet
            obs = replace(obs, route=serving(25))
            decision = engine.decide(spec, status, obs, world.now)
            world.apply(decision.actions)
            break
        world.apply(decision.actions)
        status = decision.status
        world.now += decision.requeue_after or timedelta(seconds=30)
    else:
        raise AssertionError("never promoted")
    ready = next(c for c in decision.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "RouteConverging")  # as decided, unread
    before = dump(decision.status)
    read = engine.read_back(spec, decision, replace(obs, route=world.route), world.now)
    assert dump(decision.status) == before != dump(read.status)


def test_read_back_leaves_any_other_decision_as_it_was() -> None:
    world = World()
    status = initialized(world)
    spec = make_spec("2.0.0")
    # Progressing: the route matters to the next stage's clock, so it is the next tick's.
    obs = world.observation(spec, status)
    decision = engine.decide(spec, status, obs, world.now)
    assert decision.status.phase is Phase.PROGRESSING
    assert engine.read_back(spec, decision, obs, world.now) is decision
    # Succeeded, but the route read back does not serve it (someone else rewrote it between
    # the observation and the write): not Ready, and a look again soon, whatever was decided.
    settled = settle(world, spec, decision.status)
    promoted = engine.decide(spec, settled, world.observation(spec, settled), world.now)
    stray = replace(world.observation(spec, settled), route=route(50))
    read = engine.read_back(spec, promoted, stray, world.now)
    ready = next(c for c in read.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "RouteConverging")
    assert read.requeue_reason is Wake.CONVERGE
