"""Gateway API router on recorded HTTPRoute bodies: exact weights and mirror per stage, the user's
fields untouched, idempotence, conflicts and errors."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator

import jsonpatch
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelrollout.api.models import GatewayAPIRouting
from modelrollout.engine.types import RouteState
from modelrollout.routing._common import compute_patch
from modelrollout.routing.base import DesiredRoutes, RouteNotFound, RoutingError
from modelrollout.routing.gateway_api import GROUP, PLURAL, GatewayAPIRouter, HTTPRouteEditor
from tests.unit.routing.routing_fakes import (
    SCHEMA_INVALID,
    Body,
    FakeCustomObjects,
    bump,
    load_fixture,
    percents,
    split,
)

NS, ROLLOUT, ROUTE = "ml", "fraud-detector", "fraud-detector"
A, B = "fraud-detector-a", "fraud-detector-b"


def editor(rule_index: int = 1) -> HTTPRouteEditor:
    return HTTPRouteEditor(
        namespace=NS, rollout=ROLLOUT, route=ROUTE, rule_index=rule_index, port=8080
    )


def ref(name: str, weight: int) -> Body:
    """A backendRef as the recorded route spells it (API server defaults filled in)."""
    return {"group": "", "kind": "Service", "name": name, "port": 8080, "weight": weight}


def our_mirror(name: str, percent: int | None = None) -> Body:
    spec: Body = {"backendRef": {"name": name, "port": 8080}}
    if percent is not None:
        spec["percent"] = percent
    return {"type": "RequestMirror", "requestMirror": spec}


def user_view(body: Body, ed: HTTPRouteEditor) -> str:
    """Everything but the managed paths, serialised with key order kept (byte-for-byte compare)."""
    view = copy.deepcopy(body)
    view["metadata"].pop("resourceVersion")
    rule = view["spec"]["rules"][ed.rule_index]
    rule.pop("backendRefs", None)
    if "filters" in rule:
        rule["filters"] = [f for f in rule["filters"] if not ed.is_our_mirror(f)]
        if not rule["filters"]:
            del rule["filters"]
    return json.dumps(view)


def step(body: Body, desired: DesiredRoutes, ed: HTTPRouteEditor) -> Body:
    """Compute the patch, check its shape, apply it like the API server would."""
    patch = compute_patch(ed, body, desired)
    assert patch is not None
    assert patch[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": body["metadata"]["resourceVersion"],
    }
    managed = f"/spec/rules/{ed.rule_index}/"
    for op in patch[1:]:
        assert op["path"].startswith((managed + "backendRefs", managed + "filters")), op
    new: Body = jsonpatch.apply_patch(body, patch)
    assert new == ed.render(body, desired)
    bump(new)
    return new


def managed_rule(body: Body, index: int = 1) -> Body:
    rule: Body = body["spec"]["rules"][index]
    return rule


USER_FILTERS = [
    {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {
            "set": [{"name": "x-model-route", "value": "canary-managed"}],
            "remove": ["x-debug"],
        },
    },
    {
        "type": "RequestMirror",
        "requestMirror": {
            "backendRef": {
                "group": "",
                "kind": "Service",
                "name": "traffic-recorder",
                "namespace": "observability",
                "port": 9000,
            },
            "percent": 10,
        },
    },
]

# The default stages, applied one after the other to the recorded route, then promotion.
STAGES: list[tuple[str, DesiredRoutes, list[Body], Body | None, tuple[int, int, int]]] = [
    ("shadow", DesiredRoutes(A, B, 0, 100), [ref(A, 100), ref(B, 0)], our_mirror(B), (100, 0, 100)),
    ("canary-5", DesiredRoutes(A, B, 5, 0), [ref(A, 95), ref(B, 5)], None, (95, 5, 0)),
    ("canary-25", DesiredRoutes(A, B, 25, 0), [ref(A, 75), ref(B, 25)], None, (75, 25, 0)),
    ("full", DesiredRoutes(A, B, 100, 0), [ref(A, 0), ref(B, 100)], None, (0, 100, 0)),
    ("promoted", DesiredRoutes(B, None, 0, 0), [ref(B, 100)], None, (100, 0, 0)),
]


@pytest.mark.parametrize("upto", range(len(STAGES)), ids=[s[0] for s in STAGES])
def test_stage_sequence_sets_exact_weights_and_mirror(httproute: Body, upto: int) -> None:
    ed = editor()
    body = httproute
    for _, desired, _, _, _ in STAGES[: upto + 1]:
        body = step(body, desired, ed)
    _, desired, refs, mirror, (stable, candidate, mirrored) = STAGES[upto]

    rule = managed_rule(body)
    assert rule["backendRefs"] == refs
    assert rule["filters"] == USER_FILTERS + ([mirror] if mirror else [])
    state = ed.parse(body)
    assert isinstance(state, RouteState)
    assert (state.found, percents(state), state.mirror) == (
        True,
        split(desired, stable, candidate),
        mirrored,
    )
    assert state.mirror_slot == ("b" if mirrored else None)
    assert user_view(body, ed) == user_view(httproute, ed)
    assert compute_patch(ed, body, desired) is None  # idempotent re-apply


def test_rollback_sends_everything_to_stable_and_keeps_user_fields(httproute: Body) -> None:
    ed = editor()
    body = step(httproute, DesiredRoutes(A, B, 0, 100), ed)
    body = step(body, DesiredRoutes(A, B, 25, 0), ed)
    body = step(body, DesiredRoutes(A, None, 0, 0), ed)
    assert managed_rule(body)["backendRefs"] == [ref(A, 100)]
    assert managed_rule(body)["filters"] == USER_FILTERS
    state = ed.parse(body)
    assert (percents(state), state.mirror) == ({A: 100}, 0)
    assert user_view(body, ed) == user_view(httproute, ed)


def test_candidate_backend_stays_at_weight_zero_while_it_exists(httproute: Body) -> None:
    ed = editor()
    body = step(httproute, DesiredRoutes(A, B, 0, 0), ed)
    assert managed_rule(body)["backendRefs"] == [ref(A, 100), ref(B, 0)]
    assert managed_rule(body)["filters"] == USER_FILTERS


def test_partial_mirror_writes_percent_and_full_mirror_keeps_the_field(httproute: Body) -> None:
    ed = editor()
    body = step(httproute, DesiredRoutes(A, B, 0, 5), ed)
    assert managed_rule(body)["filters"][-1] == our_mirror(B, 5)
    assert ed.parse(body).mirror == 5
    body = step(body, DesiredRoutes(A, B, 0, 100), ed)
    # once written, percent stays explicit rather than flipping between forms
    assert managed_rule(body)["filters"][-1] == our_mirror(B, 100)
    assert ed.parse(body).mirror == 100


def test_mirror_filter_is_created_when_the_rule_has_no_filters() -> None:
    body = load_fixture("httproute.yaml")
    del managed_rule(body)["filters"]
    ed = editor()
    shadow = step(body, DesiredRoutes(A, B, 0, 100), ed)
    assert managed_rule(shadow)["filters"] == [our_mirror(B)]
    canary = step(shadow, DesiredRoutes(A, B, 5, 0), ed)
    assert "filters" not in managed_rule(canary)  # back to what the user wrote
    assert user_view(canary, ed) == user_view(body, ed)


def test_leftover_state_from_a_previous_apply_is_recognised_and_converged() -> None:
    body = load_fixture("httproute-midrollout.yaml")
    ed = editor(rule_index=0)
    state = ed.parse(body)
    # stable b 75 / candidate a 25; the mirror (fraction 1/4) targets the candidate
    assert (percents(state), state.mirror, state.mirror_slot) == ({B: 75, A: 25}, 25, "a")

    new = step(body, DesiredRoutes(B, A, 25, 50), ed)
    rule = managed_rule(new, 0)
    assert rule["backendRefs"] == [
        {"name": B, "port": 8080, "weight": 75},
        {"name": A, "port": 8080, "weight": 25},
    ]
    # our filter kept its place before the user's; fraction replaced by percent
    assert rule["filters"][0] == {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": A, "port": 8080}, "percent": 50},
    }
    assert rule["filters"][1] == body["spec"]["rules"][0]["filters"][1]
    assert user_view(new, ed) == user_view(body, ed)


def test_backend_ref_without_weight_counts_as_one() -> None:
    body = load_fixture("httproute-midrollout.yaml")
    rule = managed_rule(body, 0)
    rule["backendRefs"] = [{"name": A, "port": 8080}, {"name": B, "port": 8080, "weight": 3}]
    rule.pop("filters")
    state = editor(0).parse(body)
    assert percents(state) == {A: 25, B: 75}


# ------------------------------------------------------------------------------- errors


def test_rule_index_out_of_range_names_object_and_index(httproute: Body) -> None:
    ed = editor(rule_index=7)
    with pytest.raises(
        RoutingError, match=r"HTTPRoute ml/fraud-detector has 3 rule\(s\).*ruleIndex is 7"
    ):
        ed.render(httproute, DesiredRoutes(A, B, 5, 0))
    with pytest.raises(RoutingError, match="ruleIndex is 7"):
        ed.parse(httproute)


def test_foreign_backend_in_managed_rule_is_refused(httproute: Body) -> None:
    ed = editor(rule_index=0)  # rule 0 routes to the user's platform-health Service
    with pytest.raises(
        RoutingError,
        match=r"HTTPRoute ml/fraud-detector rule 0 sends traffic to Service/platform-health",
    ):
        ed.render(httproute, DesiredRoutes(A, B, 5, 0))
    with pytest.raises(RoutingError, match="platform-health"):
        ed.parse(httproute)


@pytest.mark.parametrize(
    ("foreign", "described"),
    [
        (
            {"name": A, "namespace": "other", "port": 8080},
            "Service/fraud-detector-a (namespace other)",
        ),
        (
            {"group": "example.com", "kind": "Backend", "name": A},
            "Backend.example.com/fraud-detector-a",
        ),
        ({"name": "fraud-detector", "port": 8080}, "Service/fraud-detector"),
    ],
)
def test_lookalike_backends_are_foreign(httproute: Body, foreign: Body, described: str) -> None:
    managed_rule(httproute)["backendRefs"].append(foreign)
    with pytest.raises(RoutingError) as err:
        editor().render(httproute, DesiredRoutes(A, B, 5, 0))
    assert described in str(err.value)


def test_desired_routes_outside_the_rollout_are_a_bug(httproute: Body) -> None:
    with pytest.raises(ValueError, match="not one of rollout"):
        editor().render(httproute, DesiredRoutes("someone-else", B, 5, 0))
    with pytest.raises(ValueError, match="need a candidate_service"):
        DesiredRoutes(A, None, 0, 100)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        DesiredRoutes(A, B, 101, 0)


# --------------------------------------------------------------------------- I/O part


def router(
    api: FakeCustomObjects, rule_index: int = 1, cache: RouteCache | None = None
) -> GatewayAPIRouter:
    r = GatewayAPIRouter(
        k8s.ApiClient(),
        NS,
        ROLLOUT,
        GatewayAPIRouting(http_route=ROUTE, rule_index=rule_index),
        port=8080,
        custom_api=api,
        cache=cache,  # type: ignore[arg-type]
    )
    r.retry_initial_wait = r.retry_max_wait = 0.001
    return r


def stored(api: FakeCustomObjects) -> Body:
    return api.stored(GROUP, PLURAL, NS, ROUTE)


async def test_apply_writes_once_and_reapply_writes_nothing(httproute: Body) -> None:
    api = FakeCustomObjects(httproute)
    r = router(api)
    desired = DesiredRoutes(A, B, 5, 0)
    assert not await r.verify(desired)
    assert await r.apply(desired) is True
    assert await r.apply(desired) is False
    assert len(api.patches) == 1
    assert await r.verify(desired)
    assert managed_rule(stored(api))["backendRefs"] == [ref(A, 95), ref(B, 5)]
    state = await r.observe()
    assert (state.found, percents(state)) == (True, {A: 95, B: 5})


async def test_conflict_409_rereads_and_recomputes(httproute: Body) -> None:
    api = FakeCustomObjects(httproute)
    api.fail_with.append(ApiException(status=409, reason="Conflict"))
    r = router(api)
    assert await r.apply(DesiredRoutes(A, B, 25, 0)) is True
    assert len(api.patches) == 2
    assert api.gets == 2
    assert managed_rule(stored(api))["backendRefs"] == [ref(A, 75), ref(B, 25)]


async def test_concurrent_edit_fails_the_resource_version_test_and_is_kept(httproute: Body) -> None:
    api = FakeCustomObjects(httproute)

    def user_edits_another_rule(obj: Body) -> None:
        obj["spec"]["rules"][2]["backendRefs"][0]["weight"] = 7
        obj["spec"]["hostnames"].append("fraud.eu.example.com")
        bump(obj)

    api.before_patch.append(user_edits_another_rule)
    r = router(api)
    assert await r.apply(DesiredRoutes(A, B, 0, 100)) is True
    assert len(api.patches) == 2  # the first one failed its test op (422)
    obj = stored(api)
    assert obj["spec"]["rules"][2]["backendRefs"][0]["weight"] == 7
    assert obj["spec"]["hostnames"][-1] == "fraud.eu.example.com"
    assert managed_rule(obj)["filters"][-1] == our_mirror(B)


class RouteCache:
    """The part of the watch cache a router uses: the route as last seen, and the answers of
    its own writes taken over."""

    def __init__(self, body: Body | None) -> None:
        self.body = copy.deepcopy(body)
        self.answers: list[Body] = []

    def get(self, kind: object, namespace: str, name: str) -> Body | None:
        return self.body

    def follow_route(self, *args: object) -> None:
        pass

    @contextlib.contextmanager
    def own_write(self, *args: object) -> Iterator[Callable[[Body], None]]:
        def answer(obj: Body) -> None:
            self.answers.append(obj)
            self.body = obj

        yield answer


async def test_a_route_write_patches_the_cached_version_without_reading_it(
    httproute: Body,
) -> None:
    api = FakeCustomObjects(httproute)
    cache = RouteCache(stored(api))
    r = router(api, cache=cache)
    assert await r.apply(DesiredRoutes(A, B, 5, 0)) is True
    assert api.gets == 0 and len(api.patches) == 1
    assert managed_rule(stored(api))["backendRefs"] == [ref(A, 95), ref(B, 5)]
    assert cache.answers == [stored(api)]  # the answer went into the cache
    # the next stage patches the version the first write left in the cache
    assert await r.apply(DesiredRoutes(A, B, 25, 0)) is True
    assert api.gets == 0 and len(api.patches) == 2
    assert managed_rule(stored(api))["backendRefs"] == [ref(A, 75), ref(B, 25)]


async def test_a_stale_cached_route_is_refused_by_its_version_then_read_afresh(
    httproute: Body,
) -> None:
    api = FakeCustomObjects(httproute)
    cache = RouteCache(stored(api))
    obj = api.stored(GROUP, PLURAL, NS, ROUTE)
    obj["spec"]["hostnames"].append("fraud.eu.example.com")  # someone else, not seen yet
    bump(obj)
    r = router(api, cache=cache)
    assert await r.apply(DesiredRoutes(A, B, 5, 0)) is True
    assert len(api.patches) == 2 and api.gets == 1  # the cached try failed its test op (422)
    after = stored(api)
    assert after["spec"]["hostnames"][-1] == "fraud.eu.example.com"
    assert managed_rule(after)["backendRefs"] == [ref(A, 95), ref(B, 5)]


async def test_persistent_conflicts_give_up_after_bounded_retries(httproute: Body) -> None:
    api = FakeCustomObjects(httproute)
    api.fail_with.extend(ApiException(status=409, reason="Conflict") for _ in range(10))
    r = router(api)
    with pytest.raises(ApiException) as err:
        await r.apply(DesiredRoutes(A, B, 5, 0))
    assert err.value.status == 409
    assert len(api.patches) == r.retry_attempts


@pytest.mark.parametrize(
    "error",
    [
        ApiException(status=403, reason="Forbidden"),
        ApiException(status=422, reason="Unprocessable Entity", body=SCHEMA_INVALID),
        ApiException(status=422, reason="Unprocessable Entity", body="not json"),
    ],
    ids=["forbidden", "schema-violation", "unreadable-422"],
)
async def test_other_api_errors_are_not_retried(httproute: Body, error: ApiException) -> None:
    api = FakeCustomObjects(httproute)
    api.fail_with.append(error)
    with pytest.raises(ApiException) as raised:
        await router(api).apply(DesiredRoutes(A, B, 5, 0))
    assert raised.value is error
    assert len(api.patches) == 1


async def test_missing_route_is_a_routing_error_naming_it() -> None:
    r = router(FakeCustomObjects())
    with pytest.raises(RouteNotFound, match="HTTPRoute ml/fraud-detector not found"):
        await r.apply(DesiredRoutes(A, B, 5, 0))
    with pytest.raises(RoutingError, match="HTTPRoute ml/fraud-detector not found"):
        await r.observe()


async def test_an_unserved_route_kind_is_named_as_such() -> None:
    """A plain-text 404 is the apiserver not serving HTTPRoutes at all (no CRD, or an
    apiserver still starting), not a missing object: the message says which."""
    api = FakeCustomObjects()
    api.unserved = True
    with pytest.raises(RouteNotFound, match=r"does not serve httproutes\.gateway\.networking"):
        await router(api).observe()


async def test_finalize_leaves_stable_at_100_without_mirror(httproute: Body) -> None:
    api = FakeCustomObjects(httproute)
    r = router(api)
    await r.apply(DesiredRoutes(A, B, 0, 100))
    await r.finalize(A)
    rule = managed_rule(stored(api))
    assert rule["backendRefs"] == [ref(A, 100)]
    assert rule["filters"] == USER_FILTERS
    assert user_view(stored(api), editor()) == user_view(httproute, editor())


async def test_finalize_tolerates_a_deleted_route() -> None:
    await router(FakeCustomObjects()).finalize(A)


# ------------------------------------------------------------------ identity (issue 21)


def test_a_route_pointing_at_the_wrong_slot_is_read_as_such(httproute: Body) -> None:
    """Re-applied as first written after a promotion: slot a at 100% reads back as slot a,
    whatever position or weight, so the engine can tell it from slot b at 100%."""
    ed = editor()
    managed_rule(httproute)["backendRefs"] = [ref(A, 100)]
    state = ed.parse(httproute)
    assert [(s.service, s.slot, s.percent) for s in state.shares] == [(A, "a", 100)]
    assert "fraud-detector-a 100%" in state.message
    new = step(httproute, DesiredRoutes(B, None, 0, 0), ed)
    assert [r["name"] for r in managed_rule(new)["backendRefs"]] == [B]


def test_role_services_in_the_managed_rule_are_ours_and_replaced_by_slots(httproute: Body) -> None:
    ed = editor()
    stable = f"{ROLLOUT}-stable"
    managed_rule(httproute)["backendRefs"] = [ref(stable, 1)]
    state = ed.parse(httproute)
    assert [(s.service, s.slot, s.role, s.percent) for s in state.shares] == [
        (stable, None, "stable", 100)
    ]
    new = step(httproute, DesiredRoutes(B, None, 0, 0), ed)
    assert managed_rule(new)["backendRefs"] == [ref(B, 100)]


@pytest.mark.parametrize(
    ("filters", "said"),
    [
        ([{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}], "RequestRedirect"),
        (None, "no backendRefs;"),
    ],
)
def test_a_rule_without_backends_is_refused_not_claimed(
    httproute: Body, filters: list[Body] | None, said: str
) -> None:
    ed = editor()
    rule = managed_rule(httproute)
    rule.pop("backendRefs")
    rule.pop("filters", None)
    if filters:
        rule["filters"] = filters
    with pytest.raises(RoutingError, match="rule 1 has no backendRefs") as raised:
        ed.render(httproute, DesiredRoutes(A, None, 0, 0))
    assert said in str(raised.value) and f"{ROLLOUT}-stable" in str(raised.value)
    with pytest.raises(RoutingError, match="has no backendRefs"):
        ed.parse(httproute)


def parents(*conditions: Body) -> Body:
    return {
        "parents": [
            {"parentRef": {"name": f"gw-{i}"}, "controllerName": "x", "conditions": [c]}
            for i, c in enumerate(conditions)
        ]
    }


@pytest.mark.parametrize(
    ("status", "pending"),
    [
        ({}, None),  # no controller reports on the route: in force
        (parents({"type": "Accepted", "status": "True", "observedGeneration": 5}), None),
        (
            parents({"type": "Accepted", "status": "True", "observedGeneration": 4}),
            "parent Gateway/gw-0 accepted generation 4, not yet 5",
        ),
        (
            parents(
                {"type": "Accepted", "status": "True", "observedGeneration": 5},
                {
                    "type": "Accepted",
                    "status": "False",
                    "reason": "NotAllowedByListeners",
                    "message": "no listener",
                    "observedGeneration": 5,
                },
            ),
            "parent Gateway/gw-1 does not accept it: NotAllowedByListeners: no listener",
        ),
    ],
)
def test_a_generation_its_parents_have_not_accepted_is_pending(
    httproute: Body, status: Body, pending: str | None
) -> None:
    httproute["metadata"]["generation"] = 5
    httproute["status"] = status
    state = editor().parse(httproute)
    assert state.pending == pending
