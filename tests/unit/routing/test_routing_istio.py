"""Istio router on recorded VirtualService bodies: weights and mirror per stage, host spellings
(short and FQDN), the user's fields untouched, idempotence, conflicts and errors."""

from __future__ import annotations

import copy
import json

import jsonpatch
import pytest
from kubernetes import client as k8s

from modelrollout.api.models import IstioRouting
from modelrollout.routing._common import compute_patch
from modelrollout.routing.base import DesiredRoutes, RouteNotFound, RoutingError
from modelrollout.routing.istio import GROUP, PLURAL, IstioRouter, VirtualServiceEditor
from tests.unit.routing.routing_fakes import (
    Body,
    FakeCustomObjects,
    bump,
    load_fixture,
    percents,
    split,
)

NS, ROLLOUT, VS = "ml", "fraud-detector", "fraud-detector"
A, B = "fraud-detector-a", "fraud-detector-b"
FQDN_A, FQDN_B = f"{A}.ml.svc.cluster.local", f"{B}.ml.svc.cluster.local"
MANAGED_KEYS = ("route", "mirror", "mirrorPercentage", "mirrorPercent")


def editor(route_name: str | None = "predict") -> VirtualServiceEditor:
    return VirtualServiceEditor(
        namespace=NS, rollout=ROLLOUT, virtual_service=VS, route_name=route_name
    )


def dest(host: str, weight: int) -> Body:
    """A route[] entry as the recorded predict entry spells it (with its port)."""
    return {"destination": {"host": host, "port": {"number": 8080}}, "weight": weight}


def entry(body: Body, index: int = 1) -> Body:
    result: Body = body["spec"]["http"][index]
    return result


def user_view(body: Body, index: int) -> str:
    """Everything but the managed keys of the managed entry, key order kept."""
    view = copy.deepcopy(body)
    view["metadata"].pop("resourceVersion")
    for key in MANAGED_KEYS:
        view["spec"]["http"][index].pop(key, None)
    return json.dumps(view)


def step(body: Body, desired: DesiredRoutes, ed: VirtualServiceEditor, index: int = 1) -> Body:
    patch = compute_patch(ed, body, desired)
    assert patch is not None
    assert patch[0]["op"] == "test" and patch[0]["path"] == "/metadata/resourceVersion"
    for op in patch[1:]:
        assert op["path"].startswith(tuple(f"/spec/http/{index}/{k}" for k in MANAGED_KEYS)), op
    new: Body = jsonpatch.apply_patch(body, patch)
    bump(new)
    return new


STAGES: list[tuple[str, DesiredRoutes, list[Body], Body | None, tuple[int, int, int]]] = [
    ("shadow", DesiredRoutes(A, B, 0, 100), [dest(A, 100), dest(B, 0)], {"host": B}, (100, 0, 100)),
    ("canary-5", DesiredRoutes(A, B, 5, 0), [dest(A, 95), dest(B, 5)], None, (95, 5, 0)),
    ("canary-25", DesiredRoutes(A, B, 25, 0), [dest(A, 75), dest(B, 25)], None, (75, 25, 0)),
    ("full", DesiredRoutes(A, B, 100, 0), [dest(A, 0), dest(B, 100)], None, (0, 100, 0)),
    ("promoted", DesiredRoutes(B, None, 0, 0), [dest(B, 100)], None, (100, 0, 0)),
]


@pytest.mark.parametrize("upto", range(len(STAGES)), ids=[s[0] for s in STAGES])
def test_stage_sequence_sets_exact_weights_and_mirror(virtualservice: Body, upto: int) -> None:
    ed = editor()
    body = virtualservice
    for _, desired, _, _, _ in STAGES[: upto + 1]:
        body = step(body, desired, ed)
    _, desired, routes, mirror, expected = STAGES[upto]

    managed = entry(body)
    assert managed["route"] == routes
    assert managed.get("mirror") == mirror
    assert managed.get("mirrorPercentage") == ({"value": 100} if mirror else None)
    state = ed.parse(body)
    stable, candidate, mirrored = expected
    assert (state.found, percents(state), state.mirror) == (
        True,
        split(desired, stable, candidate),
        mirrored,
    )
    assert user_view(body, 1) == user_view(virtualservice, 1)
    assert compute_patch(ed, body, desired) is None


def test_rollback_keeps_user_fields(virtualservice: Body) -> None:
    ed = editor()
    body = step(virtualservice, DesiredRoutes(A, B, 0, 100), ed)
    body = step(body, DesiredRoutes(A, B, 25, 0), ed)
    body = step(body, DesiredRoutes(A, None, 0, 0), ed)
    assert entry(body)["route"] == [dest(A, 100)]
    assert not {"mirror", "mirrorPercentage"} & set(entry(body))
    assert user_view(body, 1) == user_view(virtualservice, 1)


def test_single_destination_without_weight_reads_as_100(virtualservice: Body) -> None:
    state = editor().parse(virtualservice)
    assert (percents(state), state.mirror) == ({A: 100}, 0)


def test_fqdn_hosts_are_read_and_written_in_the_users_spelling() -> None:
    body = load_fixture("virtualservice-fqdn.yaml")
    ed = editor(route_name=None)  # the first (and only, unnamed) entry
    state = ed.parse(body)
    # stable a 100, candidate b only mirrored at the legacy mirrorPercent 40
    assert (percents(state), state.mirror, state.mirror_slot) == ({A: 100}, 40, "b")

    new = step(body, DesiredRoutes(A, B, 5, 20), ed, index=0)
    managed = entry(new, 0)
    stable_route = copy.deepcopy(entry(body, 0)["route"][0])
    stable_route["weight"] = 95
    candidate_route = copy.deepcopy(entry(body, 0)["route"][0])
    candidate_route["destination"] = {"host": FQDN_B}  # subset v1 belongs to host a
    candidate_route["weight"] = 5
    assert managed["route"] == [stable_route, candidate_route]
    assert managed["mirror"] == {"host": FQDN_B}
    assert managed["mirrorPercentage"] == {"value": 20}
    assert "mirrorPercent" not in managed
    assert user_view(new, 0) == user_view(body, 0)
    assert compute_patch(ed, new, DesiredRoutes(A, B, 5, 20)) is None


def test_short_host_entry_gets_short_candidate_host(virtualservice: Body) -> None:
    new = step(virtualservice, DesiredRoutes(A, B, 5, 0), editor())
    assert [r["destination"]["host"] for r in entry(new)["route"]] == [A, B]


@pytest.mark.parametrize(
    ("host", "service"),
    [
        (A, A),
        (f"{A}.ml", A),
        (f"{A}.ml.svc", A),
        (FQDN_B, B),
        (f"{B}.ml.svc.corp.internal", B),
        (f"{A}.other.svc.cluster.local", None),  # another namespace's Service
        ("fraud-detector", None),
        (f"{A}x", None),
        ("fraud-detector-c", None),
    ],
)
def test_host_recognition(host: str, service: str | None) -> None:
    assert editor().service_of(host) == service


def test_mirror_percentage_read_as_float(virtualservice: Body) -> None:
    managed = entry(virtualservice)
    managed["route"].append({"destination": {"host": B}, "weight": 0})
    managed["route"][0]["weight"] = 100
    managed["mirror"] = {"host": B}
    managed["mirrorPercentage"] = {"value": 12.5}
    state = editor().parse(virtualservice)
    assert (percents(state), state.mirror, state.mirror_slot) == ({A: 100}, 12, "b")
    # the same mirror expressed as an int is a change, 12.5 != 12
    assert compute_patch(editor(), virtualservice, DesiredRoutes(A, B, 0, 12)) is not None


def test_unmanaged_mirror_is_kept_when_not_mirroring_and_refused_when_needed(
    virtualservice: Body,
) -> None:
    entry(virtualservice)["mirror"] = {"host": "traffic-recorder.observability.svc.cluster.local"}
    entry(virtualservice)["mirrorPercentage"] = {"value": 10}
    ed = editor()
    new = step(virtualservice, DesiredRoutes(A, B, 5, 0), ed)
    assert entry(new)["mirror"] == {"host": "traffic-recorder.observability.svc.cluster.local"}
    assert entry(new)["mirrorPercentage"] == {"value": 10}
    assert ed.parse(new).mirror == 0
    with pytest.raises(RoutingError, match=r"http\[1\] already mirrors to 'traffic-recorder"):
        ed.render(virtualservice, DesiredRoutes(A, B, 0, 100))


def test_route_name_not_found_lists_the_names(virtualservice: Body) -> None:
    with pytest.raises(
        RoutingError,
        match=r"VirtualService ml/fraud-detector has no http\[\] entry named 'canary'"
        r".*'health', 'predict', 'explain'",
    ):
        editor("canary").parse(virtualservice)


def test_foreign_destination_is_refused(virtualservice: Body) -> None:
    with pytest.raises(
        RoutingError, match=r"http\[0\] sends traffic to platform-health.platform.svc.cluster.local"
    ):
        editor("health").render(virtualservice, DesiredRoutes(A, B, 5, 0))


def test_no_http_routes_is_an_error(virtualservice: Body) -> None:
    virtualservice["spec"]["http"] = []
    with pytest.raises(RoutingError, match="has no http"):
        editor(None).parse(virtualservice)


# --------------------------------------------------------------------------- I/O part


def router(api: FakeCustomObjects, route_name: str | None = "predict") -> IstioRouter:
    r = IstioRouter(
        k8s.ApiClient(),
        NS,
        ROLLOUT,
        IstioRouting(virtual_service=VS, route_name=route_name),
        custom_api=api,
    )
    r.retry_initial_wait = r.retry_max_wait = 0.001
    return r


async def test_apply_retries_after_a_concurrent_edit_and_finalize_cleans_up(
    virtualservice: Body,
) -> None:
    api = FakeCustomObjects(virtualservice)

    def user_edits_timeout(obj: Body) -> None:
        obj["spec"]["http"][1]["timeout"] = "3s"
        bump(obj)

    api.before_patch.append(user_edits_timeout)
    r = router(api)
    desired = DesiredRoutes(A, B, 0, 100)
    assert await r.apply(desired) is True
    assert len(api.patches) == 2
    assert await r.apply(desired) is False
    assert await r.verify(desired)
    stored = api.stored(GROUP, PLURAL, NS, VS)
    assert entry(stored)["timeout"] == "3s"
    assert entry(stored)["mirror"] == {"host": B}

    await r.finalize(A)
    stored = api.stored(GROUP, PLURAL, NS, VS)
    assert entry(stored)["route"] == [dest(A, 100)]
    assert "mirror" not in entry(stored)
    state = await r.observe()
    assert (percents(state), state.mirror) == ({A: 100}, 0)


async def test_missing_virtual_service() -> None:
    r = router(FakeCustomObjects())
    with pytest.raises(RouteNotFound, match="VirtualService ml/fraud-detector not found"):
        await r.observe()
    await r.finalize(A)  # nothing to release, no error


def test_an_entry_without_destinations_is_refused_not_claimed(virtualservice: Body) -> None:
    managed = virtualservice["spec"]["http"][1]
    managed.pop("route")
    managed["redirect"] = {"uri": "/v2/predict"}
    with pytest.raises(
        RoutingError, match=r"http\[1\] has no route\[\] destinations \(it has redirect\)"
    ):
        editor().render(virtualservice, DesiredRoutes(A, None, 0, 0))


def test_role_service_hosts_are_ours_and_replaced_by_slots(virtualservice: Body) -> None:
    managed = virtualservice["spec"]["http"][1]
    managed["route"] = [{"destination": {"host": "fraud-detector-stable.ml.svc.cluster.local"}}]
    state = editor().parse(virtualservice)
    assert [(s.slot, s.role, s.percent) for s in state.shares] == [(None, "stable", 100)]
    new = step(virtualservice, DesiredRoutes(B, None, 0, 0), editor())
    assert [r["destination"]["host"] for r in new["spec"]["http"][1]["route"]] == [
        "fraud-detector-b.ml.svc.cluster.local"
    ]
