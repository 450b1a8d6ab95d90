"""The watch-fed cache of Deployments and Services, and the KubeClient reads that use it."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from kubernetes import client as k8s

from modelrollout.api.models import ModelRolloutSpec
from modelrollout.kube.cache import DEPLOYMENTS, SERVICES, ObjectCache, _Relist, _Watch
from modelrollout.kube.client import KubeClient
from modelrollout.kube.workloads import (
    ANNOTATION_VERSION,
    LABEL_ROLLOUT,
    build_role_service,
    build_service,
    readiness_changed,
    slot_state,
)
from modelrollout.routing import make_router
from modelrollout.routing.base import DesiredRoutes
from tests.bad_input.deep import nested

HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")


def obj(name: str, namespace: str = "ns", rv: str = "1", **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "resourceVersion": rv, "managedFields": [{}]}
    return {"metadata": meta, **extra}


class FakeResponse:
    def __init__(self, data: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""
        self._lines = lines or []
        self.released = False

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        for line in self._lines:
            yield (json.dumps(line) + "\n").encode()

    def release_conn(self) -> None:
        self.released = True

    def drain_conn(self) -> None:
        self.released = True


class FakeList:
    """A list function: the list answers, then one watch stream per call."""

    def __init__(self, items: list[dict[str, Any]], rv: str = "10") -> None:
        self.items = items
        self.rv = rv
        self.streams: list[list[dict[str, Any]]] = []
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> FakeResponse:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            return FakeResponse(lines=self.streams.pop(0) if self.streams else [])
        return FakeResponse({"metadata": {"resourceVersion": self.rv}, "items": self.items})


def watch(fake: FakeList, store: dict[Any, Any], namespace: str | None = "ns") -> _Watch:
    return _Watch(DEPLOYMENTS, fake, store, threading.Event(), namespace)


def test_a_list_fills_the_store_without_managed_fields_and_selects_the_operators_objects() -> None:
    store: dict[Any, Any] = {}
    fake = FakeList([obj("m-a"), obj("m-b")])
    w = watch(fake, store)
    assert not w.live
    assert w._relist() == "10"
    assert w.live
    assert set(store) == {("ns", "m-a"), ("ns", "m-b")}
    assert "managedFields" not in store[("ns", "m-a")]["metadata"]
    assert fake.calls[0]["label_selector"] == LABEL_ROLLOUT


def test_a_cached_deployment_keeps_what_readiness_and_identity_read_and_drops_the_pod_spec() -> (
    None
):
    template = {
        "metadata": {"annotations": {ANNOTATION_VERSION: "2"}, "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "server", "image": "m:2", "env": [{"name": "X"}]}]},
    }
    status = {"readyReplicas": 2, "updatedReplicas": 2, "replicas": 2, "observedGeneration": 4}
    deployment = obj("m-a", spec={"replicas": 2, "template": template}, status=status)
    deployment["metadata"]["generation"] = 4
    store: dict[Any, Any] = {}
    watch(FakeList([deployment]), store)._relist()
    cached = store[("ns", "m-a")]
    assert cached["spec"] == {"replicas": 2, "template": {"metadata": template["metadata"]}}
    assert cached["status"] == status
    state = slot_state(cached)
    assert (state.version, state.desired, state.ready, state.is_ready) == ("2", 2, 2, True)
    # Other kinds keep their spec: a Service's selector and ports, a route's rules.
    routes: dict[Any, Any] = {}
    route = obj("m", spec={"rules": [{"backendRefs": [{"name": "m-a"}]}]})
    _Watch(HTTPROUTES, FakeList([route]), routes, threading.Event(), "ns", None)._relist()
    assert routes[("ns", "m")]["spec"] == {"rules": [{"backendRefs": [{"name": "m-a"}]}]}


def test_watch_events_add_change_and_remove_objects_and_resume_from_the_last_version() -> None:
    store: dict[Any, Any] = {}
    fake = FakeList([obj("m-a")])
    w = watch(fake, store)
    rv = w._relist()
    fake.streams.append(
        [
            {"type": "ADDED", "object": obj("m-b", rv="11")},
            {"type": "MODIFIED", "object": obj("m-a", rv="12", spec={"replicas": 3})},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
            {"type": "DELETED", "object": obj("m-b", rv="14")},
        ]
    )
    assert w._watch(rv) == "14"
    assert set(store) == {("ns", "m-a")}
    assert store[("ns", "m-a")]["spec"] == {"replicas": 3}
    assert fake.calls[1]["watch"] is True and fake.calls[1]["resource_version"] == "10"


def test_an_expired_watch_lists_again_and_drops_what_disappeared_meanwhile() -> None:
    store: dict[Any, Any] = {("other", "x"): obj("x", "other")}  # another namespace's watch
    fake = FakeList([obj("m-a"), obj("m-b")])
    w = watch(fake, store)
    w._relist()
    fake.streams.append([{"type": "ERROR", "object": {"code": 410, "message": "too old"}}])
    with pytest.raises(_Relist):
        w._watch("10")
    fake.items = [obj("m-b")]
    w._relist()
    assert set(store) == {("ns", "m-b"), ("other", "x")}


def test_reads_miss_until_every_watch_of_the_kind_has_listed() -> None:
    cache = ObjectCache(k8s.ApiClient(), ["ns", "other"])
    cache._stores[DEPLOYMENTS][("ns", "m-a")] = obj("m-a")
    first, second = cache._watches[DEPLOYMENTS]
    first._live = True
    assert cache.get(DEPLOYMENTS, "ns", "m-a") is None  # "other" has not listed yet
    second._live = True
    assert cache.get(DEPLOYMENTS, "ns", "m-a") == obj("m-a")
    assert cache.get(DEPLOYMENTS, "ns", "m-x") is None
    assert cache.get(SERVICES, "ns", "m-a") is None


def test_a_change_of_a_rollouts_deployment_wakes_that_rollout_after_it_is_stored() -> None:
    """Readiness is seen when the Deployment changes, not at the next poll: every change of a
    labelled Deployment calls on_workload_change with (namespace, rollout), and by then the
    store already holds the new version a woken reconcile will read."""
    cache = ObjectCache(k8s.ApiClient(), ["ns"])
    store = cache._stores[DEPLOYMENTS]
    seen: list[tuple[str, str, Any]] = []
    cache.on_workload_change = lambda ns, name: seen.append(
        (ns, name, (store.get((ns, f"{name}-b")) or {}).get("status"))
    )
    [deployments] = cache._watches[DEPLOYMENTS]
    fake = FakeList([])
    deployments._list = fake
    labelled = {"labels": {LABEL_ROLLOUT: "fraud"}}
    ready = obj("fraud-b", rv="12", status={"readyReplicas": 1})
    ready["metadata"].update(labelled)
    fresh = obj("fraud-b", rv="11", status={})
    fresh["metadata"].update(labelled)
    fake.streams.append(
        [
            {"type": "ADDED", "object": fresh},
            {"type": "MODIFIED", "object": ready},
            {"type": "MODIFIED", "object": obj("unlabelled", rv="13")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}},
        ]
    )
    deployments._watch(deployments._relist())
    assert seen == [("ns", "fraud", {}), ("ns", "fraud", {"readyReplicas": 1})]
    [services] = cache._watches[SERVICES]
    assert services._on_event is None  # Services carry no readiness


def test_status_updates_that_change_nothing_the_engine_sees_wake_no_one() -> None:
    """A starting pod's Deployment passes through several status updates (replicas,
    updatedReplicas, observedGeneration) before readyReplicas; each woke its rollout for a
    reconcile that decided nothing. Only a change of existence, version, desired or ready
    replicas or of being rolled out wakes it, and a deletion does."""
    cache = ObjectCache(k8s.ApiClient(), ["ns"])
    woken: list[str] = []
    cache.on_workload_change = lambda ns, name: woken.append(name)
    [deployments] = cache._watches[DEPLOYMENTS]
    fake = FakeList([])
    deployments._list = fake

    def version(rv: str, status: dict[str, Any], generation: int = 2) -> dict[str, Any]:
        d = obj("fraud-b", rv=rv, spec={"replicas": 1}, status=status)
        d["metadata"].update({"labels": {LABEL_ROLLOUT: "fraud"}, "generation": generation})
        return d

    steps = [
        ("ADDED", version("11", {}), "exists"),
        ("MODIFIED", version("12", {"observedGeneration": 2}), None),
        ("MODIFIED", version("13", {"observedGeneration": 2, "replicas": 1}), None),
        (
            "MODIFIED",
            version("14", {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1}),
            None,
        ),
        (
            "MODIFIED",
            version(
                "15",
                {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1},
            ),
            "ready",
        ),
        (
            "MODIFIED",
            version(
                "16",
                {
                    "observedGeneration": 2,
                    "replicas": 1,
                    "updatedReplicas": 1,
                    "readyReplicas": 1,
                    "availableReplicas": 1,
                },
            ),
            None,
        ),
        ("DELETED", version("17", {}), "gone"),
    ]
    woke_at = []
    for kind, body, expected in steps:
        before = len(woken)
        fake.streams.append([{"type": kind, "object": body}])
        deployments._watch("10")
        woke_at.append("woke" if len(woken) > before else None)
        assert (woke_at[-1] is not None) == (expected is not None), (kind, body["status"])
    assert woken == ["fraud"] * 3


def test_what_changed_while_the_watch_was_down_wakes_its_rollouts_after_the_relist() -> None:
    """While the watch is broken nothing wakes a rollout; the list that mends it tells each
    change it finds (a Deployment that became ready, one that is gone) as an event would."""
    cache = ObjectCache(k8s.ApiClient(), ["ns"])
    woken: list[str] = []
    cache.on_workload_change = lambda ns, name: woken.append(name)
    [deployments] = cache._watches[DEPLOYMENTS]

    def deployment(name: str, rollout: str, ready: int) -> dict[str, Any]:
        d = obj(name, spec={"replicas": 1}, status={"readyReplicas": ready})
        d["metadata"]["labels"] = {LABEL_ROLLOUT: rollout}
        return d

    deployments._list = FakeList(
        [deployment("a-b", "a", 0), deployment("b-b", "b", 0), deployment("c-b", "c", 0)]
    )
    deployments._relist()
    woken.clear()
    # down for a while: a-b became ready, b-b was deleted, c-b changed nothing that matters
    unchanged = deployment("c-b", "c", 0)
    unchanged["status"]["observedGeneration"] = 0
    deployments._list = FakeList([deployment("a-b", "a", 1), unchanged])
    deployments._relist()
    assert sorted(woken) == ["a", "b"]
    assert cache.wakes_on_workload_change() is True  # listed, watching
    deployments._live = False  # broken again: changes go unnoticed meanwhile
    assert cache.wakes_on_workload_change() is False
    deployments._live = True
    cache.on_workload_change = None
    assert cache.wakes_on_workload_change() is False


class RouteWatch:
    """A cache following HTTPRoutes whose watch is fed by hand, and the rollouts it woke."""

    def __init__(self) -> None:
        self.cache = ObjectCache(k8s.ApiClient(), ["ns"], routes=[HTTPROUTES])
        self.woken: list[tuple[str, str]] = []
        self.cache.on_route_change = lambda ns, name: self.woken.append((ns, name))
        [self.routes] = self.cache._watches[HTTPROUTES]
        self.fake = FakeList([])
        self.routes._list = self.fake

    def deliver(self, *bodies: dict[str, Any]) -> None:
        self.fake.streams.append([{"type": "MODIFIED", "object": b} for b in bodies])
        self.routes._watch("1")


def route_version(rv: str, weights: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {
        **route(weights),
        "metadata": {**obj("route")["metadata"], "resourceVersion": rv},
        **extra,
    }


def test_someone_elses_change_of_a_route_wakes_the_rollouts_it_carries_and_ours_does_not() -> None:
    """A settled rollout is looked at rarely when a change of its route wakes it: a user's
    edit does, the operator's own write (already in the cache from its answer) and a status
    update (the gateway's) do not, nor does a route no rollout follows."""
    watch = RouteWatch()
    cache = watch.cache

    def deliver(*bodies: dict[str, Any]) -> list[tuple[str, str]]:
        watch.woken.clear()
        watch.deliver(*bodies)
        return list(watch.woken)

    assert deliver(route_version("2", {"m-a": 100})) == []  # followed by no one yet
    cache.follow_route(HTTPROUTES, "ns", "route", "m")
    cache.follow_route(HTTPROUTES, "ns", "route", "m")
    assert deliver(route_version("3", {"m-a": 50, "x": 50})) == [("ns", "m")]  # someone edited it
    assert deliver(route_version("4", {"m-a": 50, "x": 50}, status={"parents": []})) == []
    cache.offer(HTTPROUTES, route_version("5", {"m-a": 90, "m-b": 10}))  # our own write
    assert deliver(route_version("5", {"m-a": 90, "m-b": 10})) == []
    cache.follow_route(HTTPROUTES, "ns", "route", "n")  # a second rollout's rule in it
    assert sorted(deliver(route_version("6", {"m-a": 100}))) == [("ns", "m"), ("ns", "n")]
    cache.forget_rollout("ns", "m")
    assert deliver(route_version("7", {"m-a": 80, "m-b": 20})) == [("ns", "n")]


def test_our_own_route_write_seen_before_its_answer_wakes_no_one_an_edit_meanwhile_does() -> None:
    """Under load the watch often brings the operator's own write before the PATCH returns;
    then it replaces an older version and looked like an edit (a wake-up per route write)."""
    watch = RouteWatch()
    cache, woken, deliver = watch.cache, watch.woken, watch.deliver
    cache.follow_route(HTTPROUTES, "ns", "route", "m")

    deliver(route_version("2", {"m-a": 100}))
    woken.clear()
    # Our write: its event arrives first, then the answer with the same version.
    with cache.own_write(HTTPROUTES, "ns", "route") as answer:
        deliver(route_version("3", {"m-a": 90, "m-b": 10}))
        assert woken == []  # not yet told
        answer(route_version("3", {"m-a": 90, "m-b": 10}))
    assert woken == []
    assert cache._stores[HTTPROUTES][("ns", "route")]["metadata"]["resourceVersion"] == "3"
    # Someone else's edit lands while our next write is in flight: woken once it is over.
    with cache.own_write(HTTPROUTES, "ns", "route") as answer:
        deliver(route_version("4", {"m-a": 50, "x": 50}))
        deliver(route_version("5", {"m-a": 75, "m-b": 25}))
        answer(route_version("5", {"m-a": 75, "m-b": 25}))
        assert woken == []
    assert woken == [("ns", "m")]
    # A write that fails made no event of its own: whatever came meanwhile was someone else's.
    woken.clear()
    with pytest.raises(RuntimeError), cache.own_write(HTTPROUTES, "ns", "route"):
        deliver(route_version("6", {"m-a": 100}))
        raise RuntimeError("409 Conflict")
    assert woken == [("ns", "m")]
    # Nothing in flight any more: an edit wakes at once, as before.
    woken.clear()
    deliver(route_version("7", {"m-a": 60, "x": 40}))
    assert woken == [("ns", "m")] and not cache._writing


def test_a_settled_rollout_may_rest_only_while_every_watch_it_depends_on_is_live() -> None:
    cache = live_cache()
    cache.on_workload_change = lambda ns, name: None
    assert not cache.watches_everything()  # nobody listens to route changes
    cache.on_route_change = lambda ns, name: None
    assert cache.watches_everything()
    cache.follow_route(HTTPROUTES, "ns", "route", "m")
    [routes] = cache._watches[HTTPROUTES]
    routes._live = False  # its route's watch broke
    assert not cache.watches_everything()
    routes._live = True
    [deployments] = cache._watches[DEPLOYMENTS]
    deployments._live = False
    assert not cache.watches_everything()


def test_readiness_changed_is_what_slot_state_tells_the_engine() -> None:
    old = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 2,
            "readyReplicas": 1,
            "updatedReplicas": 1,
            "replicas": 1,
        },
    }
    current = {**old, "status": {**old["status"], "observedGeneration": 3}}
    assert not slot_state(old).is_ready and slot_state(current).is_ready
    assert readiness_changed(old, current)  # the same counts, but now rolled out
    assert not readiness_changed(
        current, {**current, "status": {**current["status"], "availableReplicas": 1}}
    )
    assert readiness_changed(current, {**current, "spec": {"replicas": 2}})
    assert readiness_changed(None, current) and readiness_changed(current, None)
    assert not readiness_changed(None, None)


class Refused:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected API call {args} {kwargs}")


def live_cache() -> ObjectCache:
    """A cache whose watches all listed (and found nothing yet)."""
    cache = ObjectCache(k8s.ApiClient(), routes=[HTTPROUTES])
    for watches in cache._watches.values():
        for w in watches:
            w._live = True
    return cache


def spec() -> ModelRolloutSpec:
    return ModelRolloutSpec.model_validate(
        {
            "model": {"name": "m", "version": "1", "uri": "s3://m/1"},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
            "trafficRouting": {"replicas": {}},
        }
    )


OWNER = {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
         "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}  # fmt: skip


async def test_a_cached_deployment_needs_no_request_and_absence_is_confirmed_on_demand() -> None:
    deployment = obj("m-a", spec={"replicas": 1})
    cache = live_cache()
    cache._stores[DEPLOYMENTS][("ns", "m-a")] = deployment
    kube = KubeClient(k8s.ApiClient(), cache)
    kube.apps.read_namespaced_deployment = Refused()  # type: ignore[method-assign]
    assert await kube.get_deployment("ns", "m-a") is deployment
    # Observing: a live cache that has no slot b means there is none (no GET on every tick).
    assert await kube.get_deployment("ns", "m-b") is None

    asked: list[str] = []

    def read(name: str, namespace: str, **_: Any) -> FakeResponse:
        asked.append(name)
        return FakeResponse(obj(name))

    kube.apps.read_namespaced_deployment = read  # type: ignore[method-assign]
    # Before creating anything, the apiserver is asked (the watch may trail a creation).
    found = await kube.get_deployment("ns", "m-b", confirm_absence=True)
    assert (found or {})["metadata"]["name"] == "m-b"
    assert asked == ["m-b"]
    # A cache that is not live (not listed yet, or its watch broke) is not trusted at all.
    for w in cache._watches[DEPLOYMENTS]:
        w._live = False
    assert await kube.get_deployment("ns", "m-a") == obj("m-a")
    assert asked == ["m-b", "m-a"]


async def test_a_cached_service_that_matches_needs_no_request_one_that_differs_is_read_fresh() -> (
    None
):
    wanted = build_service(OWNER, spec(), "a")
    cache = live_cache()
    cache._stores[SERVICES][("ns", "m-a")] = {**wanted, "metadata": wanted["metadata"]}
    kube = KubeClient(k8s.ApiClient(), cache)
    kube.core.read_namespaced_service = Refused()  # type: ignore[method-assign]
    assert await kube._ensure_service(OWNER, wanted) is False

    stale = json.loads(json.dumps(wanted))
    stale["spec"]["selector"] = {"old": "selector"}
    cache._stores[SERVICES][("ns", "m-a")] = stale
    patched: list[Any] = []

    def read(name: str, namespace: str, **_: Any) -> FakeResponse:
        return FakeResponse(stale)

    def patch(name: str, namespace: str, body: Any, **_: Any) -> FakeResponse:
        patched.append(body)
        return FakeResponse({})

    kube.core.read_namespaced_service = read  # type: ignore[method-assign]
    kube.core.patch_namespaced_service = patch  # type: ignore[method-assign]
    assert await kube._ensure_service(OWNER, wanted) is True
    assert patched[0]["spec"]["selector"] == wanted["spec"]["selector"]


def route(weights: dict[str, int]) -> dict[str, Any]:
    refs = [{"name": name, "port": 8080, "weight": w} for name, w in weights.items()]
    return {**obj("route"), "spec": {"rules": [{"backendRefs": refs}]}}


async def test_a_router_observes_its_route_from_the_cache_and_reads_it_when_not_cached() -> None:
    rollout = spec().model_copy(
        update={
            "traffic_routing": spec().traffic_routing.model_validate(
                {"gatewayAPI": {"httpRoute": "route"}}
            )
        }
    )
    cache = live_cache()
    cache._stores[HTTPROUTES][("ns", "route")] = route({"m-a": 90, "m-b": 10})
    router = make_router(k8s.ApiClient(), "ns", "m", rollout, cache=cache)
    router._api = Refused()  # type: ignore[attr-defined]
    state = await router.observe()
    assert (state.percent_to("a"), state.percent_to("b")) == (90, 10)

    class Api:
        def get_namespaced_custom_object(self, **_: Any) -> dict[str, Any]:
            return route({"m-a": 100})

    del cache._stores[HTTPROUTES][("ns", "route")]
    router._api = Api()  # type: ignore[attr-defined]
    assert (await router.observe()).percent_to("a") == 100
    # A cache that does not watch the kind (or is not live yet) is never asked.
    assert ObjectCache(k8s.ApiClient()).get(HTTPROUTES, "ns", "route") is None


async def test_a_route_the_operator_wrote_is_read_back_before_the_watch_brings_it() -> None:
    """Under load the route watch lags by seconds; each tick in between read the old weights,
    found the route not converged and looked again a second later. The write's answer goes
    into the cache, so the next tick reads back what was written."""
    rollout = spec().model_copy(
        update={
            "traffic_routing": spec().traffic_routing.model_validate(
                {"gatewayAPI": {"httpRoute": "route"}}
            )
        }
    )
    cache = live_cache()
    stored = {
        **route({"m-a": 100}),
        "metadata": {**obj("route")["metadata"], "resourceVersion": "7"},
    }
    cache._stores[HTTPROUTES][("ns", "route")] = stored

    class Api:
        patched: list[Any] = []

        def get_namespaced_custom_object(self, **_: Any) -> dict[str, Any]:
            return stored

        def patch_namespaced_custom_object(self, **kwargs: Any) -> dict[str, Any]:
            self.patched.append(kwargs["body"])
            answer = route({"m-a": 90, "m-b": 10})
            answer["metadata"] = {**answer["metadata"], "resourceVersion": "8"}
            return answer

    router = make_router(k8s.ApiClient(), "ns", "m", rollout, cache=cache)
    router._api = Api()  # type: ignore[attr-defined]
    assert await router.apply(DesiredRoutes("m-a", "m-b", 10, 0))
    assert Api.patched
    state = await router.observe()
    assert (state.percent_to("a"), state.percent_to("b")) == (90, 10)
    assert "managedFields" not in cache._stores[HTTPROUTES][("ns", "route")]["metadata"]


def test_an_offered_object_never_replaces_a_newer_one_from_the_watch() -> None:
    cache = live_cache()
    store = cache._stores[HTTPROUTES]
    cache.offer(HTTPROUTES, obj("route", rv="5"))
    assert store[("ns", "route")]["metadata"]["resourceVersion"] == "5"
    store[("ns", "route")] = obj("route", rv="9")  # the watch brought a later change
    cache.offer(HTTPROUTES, obj("route", rv="8"))
    cache.offer(HTTPROUTES, obj("route", rv="9"))
    assert store[("ns", "route")]["metadata"]["resourceVersion"] == "9"
    cache.offer(HTTPROUTES, obj("route", rv="10"))
    assert store[("ns", "route")]["metadata"]["resourceVersion"] == "10"
    cache.offer(("x", "v1", "unwatched"), obj("route", rv="11"))  # a kind it does not keep
    assert store[("ns", "route")]["metadata"]["resourceVersion"] == "10"


def test_a_status_write_reports_the_new_resource_version_from_the_answers_head() -> None:
    from modelrollout.kube.client import _resource_version_of

    answer = {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "m", "resourceVersion": "4711", "managedFields": [{"x": "y"}]},
        "status": {"history": [{"resourceVersion": "1"}] * 500},
    }

    class Answer:
        def __init__(self) -> None:
            self.data = json.dumps(answer, separators=(",", ":")).encode()
            self.drained = False

        def read(self, amt: int) -> bytes:
            return self.data[:amt]

        def drain_conn(self) -> None:
            self.drained = True

    response = Answer()
    assert _resource_version_of(response) == "4711"
    assert response.drained


async def test_role_services_follow_the_slots_and_cost_no_call_once_in_place() -> None:
    """``<name>-stable`` and ``<name>-canary`` select the pods of the slot in that role; a
    role switch rewrites the selector, an unchanged role is answered from the cache."""
    cache = live_cache()
    for role, slot in (("stable", "a"), ("canary", "b")):
        built = build_role_service(OWNER, spec(), role, slot)
        cache._stores[SERVICES][("ns", f"m-{role}")] = built
    kube = KubeClient(k8s.ApiClient(), cache)
    kube.core.read_namespaced_service = Refused()  # type: ignore[method-assign]
    assert await kube.ensure_roles(OWNER, spec(), {"stable": "a", "canary": "b"}) is False

    patched: list[Any] = []

    def read(name: str, namespace: str, **_: Any) -> FakeResponse:
        return FakeResponse(cache._stores[SERVICES][(namespace, name)])

    def patch(name: str, namespace: str, body: Any, **_: Any) -> FakeResponse:
        patched.append((name, body["spec"]["selector"]))
        return FakeResponse({})

    kube.core.read_namespaced_service = read  # type: ignore[method-assign]
    kube.core.patch_namespaced_service = patch  # type: ignore[method-assign]
    # promotion: b is stable, and with no candidate the canary Service selects it too
    assert await kube.ensure_roles(OWNER, spec(), {"stable": "b", "canary": "b"}) is True
    slot_b = {"modelrollout.dev/rollout": "m", "modelrollout.dev/slot": "b"}
    assert patched == [("m-stable", slot_b)]


class RawList:
    """A list function answering JSON text: a list, then one watch stream of ``lines``."""

    def __init__(self, listing: str, lines: list[str]) -> None:
        self.listing, self.lines = listing, lines

    def __call__(self, **kwargs: Any) -> Any:
        response = FakeResponse()
        if kwargs.get("watch"):
            response.stream = lambda *_, **__: iter(line.encode() + b"\n" for line in self.lines)  # type: ignore[method-assign]
        else:
            response.data = self.listing.encode()
        return response


def test_an_undecodable_route_is_left_out_and_the_watch_goes_on() -> None:
    """A tenant's route nested 1,100 levels deep (past every decoder) in its spec: the route
    watch keeps every other route, and its events, instead of failing for good."""
    deep = '{"rules":' + nested() + "}"

    def route(name: str, rv: str, spec: str) -> str:
        meta = f'{{"name":"{name}","namespace":"ns","resourceVersion":"{rv}"}}'
        return f'{{"metadata":{meta},"spec":{spec}}}'

    items = f'{route("deep", "3", deep)},{route("fine", "4", "{}")}'
    listing = f'{{"metadata":{{"resourceVersion":"10"}},"items":[{items}]}}'
    lines = [
        f'{{"type":"MODIFIED","object":{route("deep", "11", deep)}}}',
        f'{{"type":"ADDED","object":{route("new", "12", "{}")}}}',
    ]
    routes: dict[Any, Any] = {}
    w = _Watch(HTTPROUTES, RawList(listing, lines), routes, threading.Event(), "ns", None)
    assert w._relist() == "10" and w.live
    assert set(routes) == {("ns", "fine")}
    assert w._watch("10") == "12"
    assert set(routes) == {("ns", "fine"), ("ns", "new")}
