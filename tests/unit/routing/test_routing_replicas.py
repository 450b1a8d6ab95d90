"""Replica-ratio router: the replica maths, its writes (and their order), what it reads back."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from modelrollout.api.models import ReplicaRatioRouting
from modelrollout.engine.types import RouteState
from modelrollout.routing.base import DesiredRoutes, RoutingError
from modelrollout.routing.replicas import (
    ANNOTATION_CANDIDATE,
    ANNOTATION_STABLE,
    ANNOTATION_WEIGHT,
    NotOwned,
    ReplicaRatioRouter,
    split_replicas,
)
from tests.unit.routing.routing_fakes import Body, FakeWorkloads

NS, ROLLOUT = "ml", "fraud-detector"
A, B = "fraud-detector-a", "fraud-detector-b"
OWNER_UID = "9f1c2d3e-0000-4000-8000-000000000001"
OWNER: Body = {
    "apiVersion": "modelrollout.dev/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {"name": ROLLOUT, "namespace": NS, "uid": OWNER_UID},
}

# (R, w) -> (stable, candidate): ties round towards stable; both versions serve while 0 < w < 100,
# with one extra pod only where R is too small to express w.
TABLE = {
    (1, 0): (1, 0), (1, 5): (1, 1), (1, 25): (1, 1), (1, 50): (1, 1), (1, 100): (0, 1),
    (2, 0): (2, 0), (2, 5): (1, 1), (2, 25): (1, 1), (2, 50): (1, 1), (2, 100): (0, 2),
    (3, 0): (3, 0), (3, 5): (2, 1), (3, 25): (2, 1), (3, 50): (2, 1), (3, 100): (0, 3),
    (10, 0): (10, 0), (10, 5): (9, 1), (10, 25): (8, 2), (10, 50): (5, 5), (10, 100): (0, 10),
}  # fmt: skip


@pytest.mark.parametrize(("total", "weight"), sorted(TABLE))
def test_split_replicas_table(total: int, weight: int) -> None:
    assert split_replicas(total, weight) == TABLE[(total, weight)]


@pytest.mark.parametrize("total", range(0, 21))
def test_split_replicas_invariants(total: int) -> None:
    previous = (total, 0)
    for weight in range(0, 101):
        stable, candidate = split_replicas(total, weight)
        if total == 0:
            assert (stable, candidate) == (0, 0)
            continue
        assert total <= stable + candidate <= total + 1
        assert (candidate == 0) == (weight == 0)
        assert (stable == 0) == (weight == 100)
        # within half a pod of the exact split, unless raised to the 1 pod a version needs
        assert abs(candidate - total * weight / 100) <= 0.5 or candidate == 1
        # a higher weight never removes candidate pods nor adds stable ones
        assert candidate >= previous[1] and stable <= previous[0]
        previous = (stable, candidate)


def test_split_replicas_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        split_replicas(3, 120)
    with pytest.raises(ValueError, match=">= 0"):
        split_replicas(-1, 5)


def make_router(
    api: FakeWorkloads, replicas: int = 3, owner: Body | None = OWNER
) -> ReplicaRatioRouter:
    return ReplicaRatioRouter(
        k8s.ApiClient(),
        NS,
        ROLLOUT,
        ReplicaRatioRouting(),
        replicas=replicas,
        port=80,
        target_port=8080,
        owner=owner,
        workloads=api,
    )


async def test_first_apply_creates_the_shared_service_owned_by_the_rollout() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 3)
    router = make_router(api)
    state = await router.observe()
    assert not state.found and "does not exist yet" in state.message

    assert await router.apply(DesiredRoutes(A, None, 0, 0)) is True
    assert [w[0] for w in api.writes] == ["create"]
    service = api.services[ROLLOUT]
    assert service["spec"] == {
        "selector": {"modelrollout.dev/rollout": ROLLOUT},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }
    assert service["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "modelrollout.dev/v1alpha1",
            "kind": "ModelRollout",
            "name": ROLLOUT,
            "uid": OWNER["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert service["metadata"]["annotations"] == {ANNOTATION_STABLE: A, ANNOTATION_WEIGHT: "0"}
    assert await router.apply(DesiredRoutes(A, None, 0, 0)) is False
    assert len(api.writes) == 1


async def test_owner_reference_is_accepted_as_is() -> None:
    api = FakeWorkloads(owner_uid="u")
    api.add_deployment(A, 3)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}
    await make_router(api, owner=ref).apply(DesiredRoutes(A, None, 0, 0))
    assert api.services[ROLLOUT]["metadata"]["ownerReferences"] == [ref]


async def test_canary_scales_up_before_it_scales_down_and_reports_actual_weight() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 10)
    api.add_deployment(B, 0)
    router = make_router(api, replicas=10)
    await router.apply(DesiredRoutes(A, B, 0, 0))
    api.writes.clear()

    assert await router.apply(DesiredRoutes(A, B, 25, 0)) is True
    assert api.writes[:2] == [("scale", B, 2), ("scale", A, 8)]
    assert api.writes[2] == (
        "patch",
        ROLLOUT,
        {"metadata": {"annotations": {ANNOTATION_WEIGHT: "25"}}},
    )
    assert api.services[ROLLOUT]["metadata"]["annotations"][ANNOTATION_CANDIDATE] == B
    assert await router.verify(DesiredRoutes(A, B, 25, 0))
    assert not await router.verify(DesiredRoutes(A, B, 50, 0))

    # the controllers have made 8 stable and only 1 candidate pod ready so far
    api.deployments[A]["status"]["readyReplicas"] = 8
    api.deployments[B]["status"]["readyReplicas"] = 1
    state = await router.observe()
    assert (state.found, shares(state), state.mirror) == (True, {A: 75, B: 25}, 0)
    assert state.actual_candidate == pytest.approx(100 / 9, abs=0.01)

    # going back to stable: stable up; the candidate slot is the engine's to scale down
    api.writes.clear()
    assert await router.apply(DesiredRoutes(A, None, 0, 0)) is True
    assert api.writes[0] == ("scale", A, 10)
    assert ("scale", B, 0) not in api.writes
    assert ANNOTATION_CANDIDATE not in api.services[ROLLOUT]["metadata"]["annotations"]


async def test_small_replica_counts_keep_both_versions_serving() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 1)
    api.add_deployment(B, 0)
    router = make_router(api, replicas=1)
    await router.apply(DesiredRoutes(A, B, 5, 0))
    assert (api.deployments[A]["spec"]["replicas"], api.deployments[B]["spec"]["replicas"]) == (
        1,
        1,
    )
    api.deployments[B]["status"]["readyReplicas"] = 1  # the candidate pod became ready
    state = await router.observe()
    assert shares(state) == {A: 95, B: 5}  # what was asked for ...
    assert state.actual_candidate == 50.0  # ... and what is served


async def test_promotion_switches_roles_and_empties_the_old_stable() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 0)
    api.add_deployment(B, 3)
    router = make_router(api)
    await router.apply(DesiredRoutes(A, B, 100, 0))
    assert await router.apply(DesiredRoutes(B, None, 0, 0)) is True  # the Service records b
    assert api.deployments[B]["spec"]["replicas"] == 3
    assert api.deployments[A]["spec"]["replicas"] == 0
    state = await router.observe()
    assert shares(state) == {B: 100}
    assert api.services[ROLLOUT]["metadata"]["annotations"][ANNOTATION_STABLE] == B


async def test_scaling_behind_the_routers_back_is_reported() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 2)
    api.add_deployment(B, 1)
    router = make_router(api)
    await router.apply(DesiredRoutes(A, B, 25, 0))
    api.deployments[B]["spec"]["replicas"] = 3  # someone ran kubectl scale
    state = await router.observe()
    assert shares(state) == {A: 40, B: 60}
    assert "differ from the recorded weight" in state.message
    assert not await router.verify(DesiredRoutes(A, B, 25, 0))


def shares(state: RouteState) -> dict[str, int]:
    """Percent per Service, each share with the slot its Service is."""
    assert all(s.slot == s.service[-1] for s in state.shares), state.shares
    return {s.service: s.percent for s in state.shares if s.percent}


def test_the_router_sizes_the_slots_it_routes_to() -> None:
    planner = make_router(FakeWorkloads()).planner
    warming = DesiredRoutes(A, None, 0, 0)
    assert planner.replicas_for(A, 3, warming) == 3  # stable runs everything
    assert planner.replicas_for(B, 3, warming) == 1  # a warming candidate: one pod, not 3
    assert planner.replicas_for(B, 0, warming) == 0
    assert planner.replicas_for(B, 3, DesiredRoutes(A, B, 25, 0)) == 1
    assert planner.replicas_for(A, 3, DesiredRoutes(A, B, 25, 0)) == 2
    assert planner.replicas_for(B, 3, DesiredRoutes(A, B, 100, 0)) == 3


async def test_objects_of_someone_else_are_refused_before_any_write() -> None:
    api = FakeWorkloads(owner_uid="someone-elses-uid")
    api.add_deployment(A, 3)
    router = make_router(api)
    with pytest.raises(NotOwned, match=r"Deployment ml/fraud-detector-a exists and is not owned"):
        await router.apply(DesiredRoutes(A, None, 0, 0))
    assert api.writes == []
    api.deployments[A]["metadata"]["ownerReferences"] = [{"uid": OWNER_UID}]
    api.services[ROLLOUT] = {
        "metadata": {"name": ROLLOUT, "annotations": {ANNOTATION_STABLE: A}},
        "spec": {"selector": {"modelrollout.dev/rollout": ROLLOUT}},
    }
    with pytest.raises(NotOwned, match=r"Service ml/fraud-detector exists and is not owned"):
        await router.observe()
    with pytest.raises(NotOwned):
        await router.apply(DesiredRoutes(A, None, 0, 0))
    assert api.writes == []


async def test_mirror_is_refused() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 3)
    with pytest.raises(RoutingError, match="cannot mirror traffic"):
        await make_router(api).apply(DesiredRoutes(A, B, 0, 100))
    assert api.writes == []


async def test_a_foreign_service_with_the_shared_name_is_refused() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 3)
    api.services[ROLLOUT] = {
        "metadata": {"name": ROLLOUT, "ownerReferences": [{"uid": OWNER_UID}]},
        "spec": {"selector": {"app": "legacy"}},
    }
    router = make_router(api)
    with pytest.raises(
        RoutingError, match=r"Service ml/fraud-detector exists but selects \{'app': 'legacy'\}"
    ):
        await router.apply(DesiredRoutes(A, None, 0, 0))
    with pytest.raises(RoutingError, match="exists but selects"):
        await router.observe()
    assert api.writes == []


async def test_missing_deployments() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    router = make_router(api)
    with pytest.raises(
        RoutingError, match=r"Deployment ml/fraud-detector-a \(stable slot\) does not exist"
    ):
        await router.apply(DesiredRoutes(A, None, 0, 0))
    api.add_deployment(A, 3)
    with pytest.raises(
        RoutingError, match=r"Deployment ml/fraud-detector-b \(candidate slot\) does not exist"
    ):
        await router.apply(DesiredRoutes(A, B, 5, 0))
    assert api.writes == []
    # a candidate that is not there yet but gets no pods is fine
    assert await router.apply(DesiredRoutes(A, B, 0, 0)) is True


async def test_concurrent_service_creation_converges() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 3)
    api.create_conflict = True
    router = make_router(api)
    assert await router.apply(DesiredRoutes(A, None, 0, 0)) is True
    assert api.services[ROLLOUT]["metadata"]["annotations"] == {
        ANNOTATION_STABLE: A,
        ANNOTATION_WEIGHT: "0",
    }


async def test_port_drift_is_corrected() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 3)
    await make_router(api).apply(DesiredRoutes(A, None, 0, 0))
    api.services[ROLLOUT]["spec"]["ports"][0]["targetPort"] = 9999
    api.writes.clear()
    assert await make_router(api).apply(DesiredRoutes(A, None, 0, 0)) is True
    assert api.writes == [
        (
            "patch",
            ROLLOUT,
            {
                "spec": {
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
                }
            },
        )
    ]


async def test_finalize() -> None:
    api = FakeWorkloads(owner_uid=OWNER_UID)
    api.add_deployment(A, 2)
    api.add_deployment(B, 1)
    router = make_router(api)
    await router.apply(DesiredRoutes(A, B, 25, 0))
    await router.finalize(A)
    # all capacity back on stable; the candidate goes with the rollout (garbage-collected)
    assert api.deployments[A]["spec"]["replicas"] == 3
    # nothing to do once the stable Deployment is gone (the rollout is being deleted)
    del api.deployments[A]
    api.writes.clear()
    await router.finalize(A)
    assert api.writes == []
