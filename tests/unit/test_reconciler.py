"""The reconciler's own rules: what it observes, and the order in which it carries out a decision.

The engine decides; these tests pin how the decision reaches the cluster: traffic towards the
stable version before the status write, only the final route of a multi-step decision, nothing
touched for an invalid spec, replica-ratio sizing, and command parsing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout.api.models import ModelRef, ModelRolloutStatus, Phase
from modelrollout.engine.types import Command, CommandVerb, RouteState, Wake
from modelrollout.kube.cache import older
from modelrollout.kube.workloads import ANNOTATION_VERSION
from modelrollout.reconciler import (
    Reconciler,
    StaleStatus,
    parse_command,
    status_patch,
)
from modelrollout.routing.base import DesiredRoutes, RoutingError
from tests.unit.route_states import serving

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def spec_body(version: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "m", "version": version, "uri": f"s3://m/{version}"},
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "m"}},
        "stages": [
            {"name": "canary", "weight": 10, "duration": "1m"},
            {"name": "full", "weight": 100},
        ],
    }
    spec.update(extra)
    return spec


def body(version: str, status: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "u1",
            "generation": 3,
            "annotations": {},
        },
        "spec": spec_body(version, **extra),
        "status": status or {},
    }


def settled_v1() -> dict[str, Any]:
    """The stored status of a rollout whose version 1 serves everything from slot a."""
    return ModelRolloutStatus.model_validate(
        {
            "phase": "Succeeded",
            "stable": {"name": "m", "version": "1", "uri": "s3://m/1"},
            "stableVersion": "1",
            "stableSlot": "a",
        }
    ).model_dump(mode="json", by_alias=True)


def deployment(version: str, replicas: int = 1, ready: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {ANNOTATION_VERSION: version}}},
        },
        "status": {"readyReplicas": ready, "updatedReplicas": ready, "observedGeneration": 1},
    }


class World:
    """Fake cluster: records every write in one ordered log."""

    def __init__(self, deployments: dict[str, dict[str, Any]], route: RouteState) -> None:
        self.deployments = deployments
        self.route = route
        self.log: list[tuple[str, Any]] = []
        self.api_client = object()
        self.routing_error: str | None = None

    # KubeClient
    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.deployments.get(name)

    async def ensure_roles(self, owner: Any, spec: Any, roles: Any) -> bool:
        self.log.append(("roles", dict(roles)))
        return False

    async def ensure_slot(
        self, owner: Any, spec: Any, slot: str, model: ModelRef, replicas: int
    ) -> bool:
        self.log.append(("ensure", (slot, model.version, replicas)))
        return True

    async def scale_slot(self, namespace: str, rollout: str, slot: str, replicas: int) -> bool:
        self.log.append(("scale", (slot, replicas)))
        return True

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.log.append(("status", status))

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("no secrets in these tests")

    # TrafficRouter
    def router(self, *_: Any, **__: Any) -> World:
        return self

    async def observe(self) -> RouteState:
        if self.routing_error:
            raise RoutingError(self.routing_error)
        return self.route

    async def apply(self, desired: DesiredRoutes) -> bool:
        self.log.append(
            ("route", (desired.stable_service, desired.candidate_service, desired.candidate_weight))
        )
        return True

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        return asked

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]


def reconciler(world: World, events: list[tuple[str, str]]) -> Reconciler:
    return Reconciler(
        kube=world,  # type: ignore[arg-type]
        providers=None,  # type: ignore[arg-type]
        post_event=lambda _b, type_, reason, _m: events.append((type_, reason)),
        router_factory=world.router,
    )


def progressing_status(
    stage_index: int, stage: str, weight: int, ready_at: datetime
) -> dict[str, Any]:
    status = ModelRolloutStatus.model_validate(
        {
            "phase": "Progressing",
            "stage": {
                "index": stage_index,
                "name": stage,
                "weight": weight,
                "startedAt": ready_at,
                "readyAt": ready_at,
            },
            "stable": {"name": "m", "version": "1", "uri": "s3://m/1"},
            "candidate": {"name": "m", "version": "2", "uri": "s3://m/2"},
            "stableVersion": "1",
            "candidateVersion": "2",
            "stableSlot": "a",
            "rolloutStartedAt": ready_at,
            "weights": {"stable": 100 - weight, "candidate": weight},
        }
    )
    return status.model_dump(mode="json", by_alias=True)


async def test_entering_the_last_stage_and_promoting_in_one_tick_applies_only_the_final_route() -> (
    None
):
    world = World(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(10),
    )
    events: list[tuple[str, str]] = []
    status = progressing_status(0, "canary", 10, NOW - timedelta(minutes=2))
    decision = await reconciler(world, events).reconcile(body("2", status), NOW)
    assert decision is not None and decision.status.phase is Phase.SUCCEEDED
    routes = [arg for kind, arg in world.log if kind == "route"]
    assert routes == [("m-b", None, 0)], "only the promotion's route, not the full stage's"
    # Traffic moves to the promoted slot before the decision is recorded; the old stable
    # is scaled down only after both.
    assert world.kinds().index("route") < world.kinds().index("status")
    assert ("scale", ("a", 0)) in world.log
    assert world.kinds().index("status") < world.log.index(("scale", ("a", 0)))
    assert ("Normal", "Promoted") in events
    # Both role Services follow the promotion before the old stable's pods go away.
    roles = world.log.index(("roles", {"stable": "b", "canary": "b"}))
    assert world.kinds().index("status") < roles < world.log.index(("scale", ("a", 0)))


class ReadBack(World):
    """A router whose reads return what it last wrote, unless someone rewrote it (``override``)."""

    override: RouteState | None = None

    async def apply(self, desired: DesiredRoutes) -> bool:
        await super().apply(desired)
        weight = desired.candidate_weight if desired.candidate_service else 0
        stable = "a" if desired.stable_service.endswith("-a") else "b"
        self.route = self.override or serving(weight, stable=stable)
        return True


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_a_promotion_reads_its_route_back_and_says_ready_in_its_one_status_write() -> None:
    world = ReadBack(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(100),
    )
    status = progressing_status(2, "full", 100, NOW - timedelta(minutes=2))
    decision = await reconciler(world, []).reconcile(body("2", status), NOW)
    assert decision is not None and decision.status.phase is Phase.SUCCEEDED
    writes = [arg for kind, arg in world.log if kind == "status"]
    assert len(writes) == 1
    assert (ready(writes[0])["status"], ready(writes[0])["reason"]) == ("True", "Succeeded")
    assert decision.requeue_after is None  # settled: no look a second later to read it back

    # The next look (the write's own watch event) finds nothing left to write.
    world.log.clear()
    after = decision.status.model_dump(mode="json", by_alias=True)
    again = await reconciler(world, []).reconcile(body("2", after), NOW + timedelta(seconds=1))
    assert again is not None and "status" not in world.kinds()


async def test_a_promotion_whose_route_reads_back_otherwise_is_not_ready_yet() -> None:
    world = ReadBack(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(100),
    )
    world.override = serving(50)
    status = progressing_status(2, "full", 100, NOW - timedelta(minutes=2))
    decision = await reconciler(world, []).reconcile(body("2", status), NOW)
    assert decision is not None and decision.status.phase is Phase.SUCCEEDED
    (write,) = [arg for kind, arg in world.log if kind == "status"]
    assert (ready(write)["status"], ready(write)["reason"]) == ("False", "RouteConverging")
    assert decision.requeue_reason is Wake.CONVERGE


@pytest.mark.parametrize("reads_back", [True, False], ids=["as-written", "not-yet"])
async def test_a_stage_whose_route_reads_back_as_written_needs_no_look_to_re_read_it(
    reads_back: bool,
) -> None:
    deployments = {"m-a": deployment("1"), "m-b": deployment("2")}
    start = serving()
    world = ReadBack(deployments, start) if reads_back else World(deployments, start)
    decision = await reconciler(world, []).reconcile(body("2", settled_v1()), NOW)
    assert decision is not None and ("route", ("m-a", "m-b", 10)) in world.log
    if reads_back:
        assert decision.requeue_reason is not Wake.CONVERGE
        assert decision.requeue_after is not None and decision.requeue_after > timedelta(seconds=1)
    else:  # the route still reads as before the write: look again soon
        assert decision.requeue_reason is Wake.CONVERGE


async def test_traffic_towards_the_candidate_is_set_after_the_status_commits_the_stage() -> None:
    world = World(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(),
    )
    status = settled_v1()
    await reconciler(world, []).reconcile(body("2", status), NOW)
    kinds = world.kinds()
    assert "status" in kinds and "route" in kinds
    assert kinds.index("status") < kinds.index("route")
    assert ("route", ("m-a", "m-b", 10)) in world.log


async def test_invalid_spec_writes_the_reason_and_touches_nothing_else() -> None:
    world = World({"m-a": deployment("1")}, serving())
    events: list[tuple[str, str]] = []
    bad = body("2")
    bad["spec"]["stages"] = [{"name": "full", "weight": 150}]
    assert await reconciler(world, events).reconcile(bad, NOW) is None
    assert world.kinds() == ["status"]
    written = world.log[0][1]
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "spec.stages[0].weight" in ready["message"]
    assert ("Warning", "InvalidSpec") in events


async def test_a_route_that_cannot_be_managed_holds_the_rollout() -> None:
    world = World({"m-a": deployment("1"), "m-b": deployment("2")}, serving())
    world.routing_error = "HTTPRoute ns/m not found"
    status = progressing_status(0, "canary", 10, NOW - timedelta(seconds=10))
    decision = await reconciler(world, []).reconcile(body("2", status), NOW)
    assert decision is not None
    assert "route" not in world.kinds() and "scale" not in world.kinds()
    stalled = next(c for c in decision.status.conditions if c.type == "Stalled")
    assert stalled.status == "True" and "not found" in stalled.message


async def test_an_unchanged_decision_writes_no_status() -> None:
    world = World({"m-a": deployment("1")}, serving())
    status = settled_v1()
    first = await reconciler(world, []).reconcile(body("1", status), NOW)
    assert first is not None
    world.log.clear()
    settled = first.status.model_dump(mode="json", by_alias=True)
    await reconciler(world, []).reconcile(body("1", settled), NOW)
    assert "status" not in world.kinds()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "promote:2026-11-22T10:00:00Z-ab12",
            Command(CommandVerb.PROMOTE, "promote:2026-11-22T10:00:00Z-ab12", "alice"),
        ),
        ("ABORT", Command(CommandVerb.ABORT, "ABORT", "alice")),
        ("explode:1", None),
        ("", None),
    ],
)
def test_parse_command(raw: str, expected: Command | None) -> None:
    annotations = {"modelrollout.dev/command": raw, "modelrollout.dev/command-by": "alice"}
    assert parse_command(annotations) == expected


class Sizing(World):
    """A router that weights traffic by replica counts: it sizes every slot (``replicas``)."""

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        self.log.append(("size", (service, asked, desired.candidate_service)))
        return 7 if service == "m-b" else asked


async def test_the_router_sizes_every_slot_the_engine_ensures() -> None:
    """No routing mode is special-cased in the reconciler: the slots run what the router says
    (replica ratio: a warming candidate gets one pod), asked with the traffic in force."""
    world = Sizing({"m-a": deployment("1")}, serving())
    status = ModelRolloutStatus.model_validate(
        {
            "phase": "Succeeded",
            "stable": {"name": "m", "version": "1", "uri": "s3://m/1"},
            "stableVersion": "1",
            "stableSlot": "a",
        }
    ).model_dump(mode="json", by_alias=True)
    decision = await reconciler(world, []).reconcile(body("2", status), NOW)
    assert decision is not None and decision.status.phase is Phase.PROGRESSING
    assert ("size", ("m-b", 1, None)) in world.log  # asked while the candidate gets nothing yet
    assert ("ensure", ("b", "2", 7)) in world.log  # what the router said, not what was asked
    assert ("ensure", ("a", "1", 1)) in world.log


async def test_a_foreign_slot_object_holds_the_rollout_as_invalid() -> None:
    from modelrollout.kube.client import SlotNotOwned

    class Foreign(World):
        async def ensure_slot(self, *args: Any) -> bool:
            raise SlotNotOwned("Deployment ns/m-b exists and is not owned by ModelRollout m")

    world = Foreign({"m-a": deployment("1")}, serving())
    status = settled_v1()
    rec = reconciler(world, [])
    first = await rec.reconcile(body("2", status), NOW)
    assert first is not None
    second = await rec.reconcile(
        body("2", first.status.model_dump(mode="json", by_alias=True)), NOW
    )
    assert second is not None
    ready = next(c for c in second.status.conditions if c.type == "Ready")
    assert ready.reason == "InvalidSpec" and "not owned by ModelRollout m" in ready.message


def test_a_status_patch_carries_only_the_top_level_fields_that_changed() -> None:
    stored = {"phase": "Progressing", "history": [1, 2], "analysis": {"runs": 1}, "message": "x"}
    after = {"phase": "Progressing", "history": [1, 2], "analysis": {"runs": 2}}
    assert status_patch(stored, after) == {"analysis": {"runs": 2}, "message": None}
    assert status_patch(after, after) == {}
    # A field another controller (or kopf) keeps in the status is not ours to delete.
    assert status_patch({**after, "kopf": {"progress": {}}}, after) == {}
    # A field never stored is sent even when it equals its default.
    assert status_patch({"phase": "Progressing"}, {"phase": "Progressing", "weights": {}}) == {
        "weights": {}
    }


async def test_fields_at_their_default_reach_the_stored_status_once() -> None:
    """Parsing a stored status fills in defaults (weights 0/0): a patch computed against the
    parsed model would never send them, and ``kubectl get -o yaml`` (and every reader) would
    see no weights on a rollout held before its first stage."""
    world = World(  # the candidate is not ready yet: no traffic moves, weights stay 100/0/0
        {"m-a": deployment("1"), "m-b": deployment("2", ready=0)},
        serving(),
    )
    stored = {
        "phase": "Succeeded",
        "stableVersion": "1",
        "stableSlot": "a",
        "stable": {"name": "m", "version": "1", "uri": "s3://m/1"},
    }
    rec = reconciler(world, [])
    decision = await rec.reconcile(body("2", stored), NOW)
    assert decision is not None
    [patch] = [status for kind, status in world.log if kind == "status"]
    assert decision.status.phase == "Progressing"
    assert patch["weights"] == {"stable": 100, "candidate": 0, "mirror": 0, "actualCandidate": None}
    assert "stableSlot" not in patch  # unchanged and stored: not resent


def test_resource_versions_compare_as_revisions_and_anything_else_is_never_older() -> None:
    assert older("99", "100") and not older("100", "100") and not older("101", "100")
    assert not older(None, "100") and not older("abc", "100")


class Versioned(World):
    """A World whose status writes answer with a new resourceVersion, like the apiserver."""

    version = 100

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> str:
        await super().patch_status(namespace, name, status)
        self.version += 1
        return str(self.version)


async def test_a_body_older_than_our_own_status_write_is_not_decided_on_again() -> None:
    """The watch may deliver our own write after the next tick: deciding on the older body
    would take the same transition twice (a second audit entry, a second event). The tick is
    refused until the body has caught up."""
    world = Versioned(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(),
    )
    status = settled_v1()
    rec = reconciler(world, [])
    stale = body("2", status)
    stale["metadata"]["resourceVersion"] = "100"
    decision = await rec.reconcile(stale, NOW)
    assert decision is not None and [k for k in world.kinds() if k == "status"] == ["status"]
    with pytest.raises(StaleStatus, match="older than this operator's own status write 101"):
        await rec.reconcile(stale, NOW)
    caught_up = body("2", decision.status.model_dump(mode="json", by_alias=True))
    caught_up["metadata"]["resourceVersion"] = "101"
    world.log.clear()
    await rec.reconcile(caught_up, NOW)  # the same decision again: nothing to write
    assert "status" not in world.kinds()
    recreated = body("2", status)
    recreated["metadata"].update(uid="u2", resourceVersion="5")  # deleted and created again
    assert await rec.reconcile(recreated, NOW) is not None


async def test_the_spec_is_parsed_again_when_its_generation_changes() -> None:
    """The parsed spec is kept per generation: a new generation (any spec edit) is read anew,
    so a new version applied mid-rollout is seen on the next tick."""
    world = World(
        {"m-a": deployment("1"), "m-b": deployment("2", ready=0)},
        serving(),
    )
    rec = reconciler(world, [])
    first = await rec.reconcile(body("2", settled_v1()), NOW)
    assert first is not None and first.status.candidate_version == "2"
    edited = body("3", first.status.model_dump(mode="json", by_alias=True))
    edited["metadata"]["generation"] = 4
    second = await rec.reconcile(edited, NOW)
    assert second is not None and second.status.candidate_version == "3"


class WatchingCache:
    def __init__(self, live: bool) -> None:
        self.live = live

    def wakes_on_workload_change(self) -> bool:
        return self.live


@pytest.mark.parametrize(
    ("cache", "poll"),
    [(None, 5), (WatchingCache(live=False), 5), (WatchingCache(live=True), 30)],
    ids=["no cache", "watch broken", "watch live"],
)
async def test_waiting_for_the_candidate_polls_rarely_only_while_a_change_would_wake_it(
    cache: WatchingCache | None, poll: int
) -> None:
    # Half of all reconciles at 1,000 rollouts were 5 s polls for the candidates' readiness
    # while their pods started, although every change of a Deployment wakes its rollout.
    world = World(
        {"m-a": deployment("1"), "m-b": deployment("2", ready=0)},
        serving(),
    )
    world.cache = cache  # type: ignore[attr-defined]
    # an analysis interval shorter than the poll does not bring the poll forward
    rollout = body("2", settled_v1(), analysis={"interval": "5s"})
    decision = await reconciler(world, []).reconcile(rollout, NOW)
    assert decision is not None and decision.status.stage is not None
    assert decision.status.stage.ready_at is None
    assert (decision.requeue_after, decision.requeue_reason) == (
        timedelta(seconds=poll),
        Wake.READINESS,
    )


async def test_a_status_written_by_someone_else_is_told_from_our_own() -> None:
    """A settled rollout is looked at every few minutes: its daemon must wake when someone
    wipes or edits its status, and not for the watch events of the operator's own writes."""
    world = Versioned(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(),
    )
    rec = reconciler(world, [])
    stored = settled_v1()
    first = body("1", stored)
    first["metadata"]["resourceVersion"] = "100"
    assert not rec.changed_by_others(first)  # never looked at: nothing to compare with
    settled = await rec.reconcile(first, NOW)
    assert settled is not None
    stored = settled.status.model_dump(mode="json", by_alias=True)
    again = body("1", stored)
    again["metadata"]["resourceVersion"] = str(world.version)
    assert not rec.changed_by_others(again)  # its own write, as the watch brings it back
    await rec.reconcile(again, NOW)
    assert not rec.changed_by_others(again)  # what it found, unchanged
    # Our own write (version 2 starts): its watch event is ours.
    started = body("2", stored)
    started["metadata"]["resourceVersion"] = str(world.version)
    decision = await rec.reconcile(started, NOW)
    assert decision is not None and "status" in world.kinds()
    echo = body("2", decision.status.model_dump(mode="json", by_alias=True))
    echo["metadata"]["resourceVersion"] = str(world.version)
    assert not rec.changed_by_others(echo)
    late = body("2", stored)  # an event from before our write, delivered late
    late["metadata"]["resourceVersion"] = "99"
    assert not rec.changed_by_others(late)
    wiped = body("2", {})
    wiped["metadata"]["resourceVersion"] = str(world.version + 1)
    assert rec.changed_by_others(wiped)


async def test_our_last_writes_event_seen_while_the_next_write_is_in_flight_is_ours() -> None:
    """kopf may hand the daemon the body of our write before its event handler sees that
    event; the next tick's write has set its own fingerprint by then. The event's version is
    the one our last write answered with: ours, not someone else's change."""
    world = Versioned(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(),
    )
    rec = reconciler(world, [])
    tick = body("2", settled_v1())
    tick["metadata"]["resourceVersion"] = "100"
    first = await rec.reconcile(tick, NOW)  # writes version 101
    assert first is not None and world.version == 101
    ours = body("2", first.status.model_dump(mode="json", by_alias=True))
    ours["metadata"]["resourceVersion"] = "101"

    # kopf's own metadata patch (finalizer, annotation) lands between our read and our write:
    # its event carries the status our write replaces.
    kopf_patch = body("2", first.status.model_dump(mode="json", by_alias=True))

    class InFlight(Versioned):
        async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> str:
            # the event of write 101 is handled while this write is under way
            seen.append(rec.changed_by_others(ours))
            self.version += 1
            kopf_patch["metadata"]["resourceVersion"] = str(self.version)
            seen.append(rec.changed_by_others(kopf_patch))
            return await super().patch_status(namespace, name, status)

    seen: list[bool] = []
    world.__class__ = InFlight
    later = await rec.reconcile(ours, NOW + timedelta(minutes=20))
    assert later is not None and seen == [False, False]
    someone = body("2", {})
    someone["metadata"]["resourceVersion"] = str(world.version + 1)
    assert rec.changed_by_others(someone)
    # Once our write is done, the status it replaced coming back is someone else's doing.
    kopf_patch["metadata"]["resourceVersion"] = str(world.version + 2)
    assert rec.changed_by_others(kopf_patch)


async def test_a_rollback_moves_traffic_to_stable_then_records_then_scales_the_candidate_down() -> (
    None
):
    """README, "Rollback ordering": 100% to the stable slot first; the candidate is scaled to
    zero only after that. The record (the status write) sits between the two: a crash after it
    is healed by the next tick, which scales down what the committed status says is retired."""
    world = World(
        {"m-a": deployment("1"), "m-b": deployment("2")},
        serving(10),
    )
    stored = body("2", progressing_status(0, "canary", 10, NOW - timedelta(seconds=10)))
    stored["metadata"]["annotations"] = {
        "modelrollout.dev/command": "abort:x1",
        "modelrollout.dev/command-by": "alice",
    }
    decision = await reconciler(world, []).reconcile(stored, NOW)
    assert decision is not None and decision.status.phase is Phase.ROLLED_BACK

    kinds = world.kinds()
    to_stable = world.log.index(("route", ("m-a", None, 0)))
    [record] = [i for i, (kind, _) in enumerate(world.log) if kind == "status"]
    scale_down = world.log.index(("scale", ("b", 0)))
    assert to_stable < record < scale_down, world.log
    assert world.log[record][1]["phase"] == "RolledBack"
    assert "route" not in kinds[record:], "no traffic moves after the record"
