"""The routers against a real API server: the lab's HTTPRoute and VirtualService CRDs (with their
schema defaults and pruning), real resourceVersions and real JSON-patch conflicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout.api.models import GatewayAPIRouting, IstioRouting
from modelrollout.routing import gateway_api, istio
from modelrollout.routing._common import compute_patch, is_conflict
from modelrollout.routing.base import DesiredRoutes

pytestmark = pytest.mark.lab

FIXTURES = Path(__file__).parent.parent / "tests" / "unit" / "routing" / "fixtures"
ROLLOUT = "fraud-detector"
A, B = "fraud-detector-a", "fraud-detector-b"

STAGES = [
    ("shadow", DesiredRoutes(A, B, 0, 100), (100, 0, 100)),
    ("canary-5", DesiredRoutes(A, B, 5, 0), (95, 5, 0)),
    ("canary-25", DesiredRoutes(A, B, 25, 0), (75, 25, 0)),
    ("full", DesiredRoutes(A, B, 100, 0), (0, 100, 0)),
    ("promoted", DesiredRoutes(B, None, 0, 0), (100, 0, 0)),
]


def manifest(fixture: str, namespace: str) -> dict[str, Any]:
    """A recorded body turned back into what a user would apply."""
    body: dict[str, Any] = yaml.safe_load((FIXTURES / fixture).read_text())
    body.pop("status", None)
    meta = body["metadata"]
    for key in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        meta.pop(key, None)
    meta["namespace"] = namespace
    return drop_empty_groups(body)


def drop_empty_groups(value: Any) -> Any:
    """``group: ""`` (the core group, the CRD's default) and no group mean the same."""
    if isinstance(value, dict):
        return {k: drop_empty_groups(v) for k, v in value.items() if not (k == "group" and v == "")}
    if isinstance(value, list):
        return [drop_empty_groups(v) for v in value]
    return value


def user_view(body: dict[str, Any], strip: Any) -> str:
    view = copy.deepcopy(body)
    meta = view["metadata"]
    for key in ("resourceVersion", "generation", "managedFields"):
        meta.pop(key, None)
    strip(view)
    return json.dumps(view, sort_keys=True)


def strip_httproute(view: dict[str, Any]) -> None:
    rule = view["spec"]["rules"][1]
    rule.pop("backendRefs", None)
    rule["filters"] = [
        f
        for f in rule.get("filters", [])
        if not (f["type"] == "RequestMirror" and f["requestMirror"]["backendRef"]["name"] in (A, B))
    ]


def strip_virtualservice(view: dict[str, Any]) -> None:
    for key in ("route", "mirror", "mirrorPercentage", "mirrorPercent"):
        view["spec"]["http"][1].pop(key, None)


async def run_stages(router: Any, api: client.CustomObjectsApi, ref: Any, strip: Any) -> None:
    def read() -> dict[str, Any]:
        body: dict[str, Any] = api.get_namespaced_custom_object(
            ref.group, ref.version, ref.namespace, ref.plural, ref.name
        )
        return body

    before = user_view(read(), strip)
    for name, desired, (stable, candidate, mirror) in STAGES:
        assert await router.apply(desired) is True, name
        state = await router.observe()
        assert (
            state.percent_to(desired.stable_service[-1]),
            state.percent_to(desired.candidate_service[-1]) if desired.candidate_service else 0,
            state.mirror,
        ) == (stable, candidate, mirror), name
        assert await router.verify(desired), name
        # what the server stored (after defaulting and pruning) is a fixed point
        assert await router.apply(desired) is False, name
        assert user_view(read(), strip) == before, name


async def test_httproute_stages_keep_user_rules(kube_api: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)
    body = manifest("httproute.yaml", namespace)
    api.create_namespaced_custom_object(
        gateway_api.GROUP, gateway_api.VERSION, namespace, gateway_api.PLURAL, body
    )
    router = gateway_api.GatewayAPIRouter(
        kube_api, namespace, ROLLOUT, GatewayAPIRouting(http_route=ROLLOUT, rule_index=1), port=8080
    )
    await run_stages(router, api, router.ref, strip_httproute)

    stored = api.get_namespaced_custom_object(
        gateway_api.GROUP, gateway_api.VERSION, namespace, gateway_api.PLURAL, ROLLOUT
    )
    # The CRD defaults backendRef.group to "" (the core group); absent means the same.
    assert drop_empty_groups(stored["spec"]["rules"][1]["backendRefs"]) == [
        {"kind": "Service", "name": B, "port": 8080, "weight": 100}
    ]
    assert stored["spec"]["hostnames"] == body["spec"]["hostnames"]
    assert drop_empty_groups(stored["spec"]["rules"][0]) == drop_empty_groups(
        body["spec"]["rules"][0]
    )

    # a partial mirror survives the schema (Gateway API >= 1.2 `percent`)
    await router.apply(DesiredRoutes(B, A, 0, 5))
    assert (await router.observe()).mirror == 5
    await router.finalize(B)
    state = await router.observe()
    assert (state.percent_to("b"), state.percent_to("a"), state.mirror) == (100, 0, 0)


async def test_virtualservice_stages_keep_user_routes(kube_api: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)
    api.create_namespaced_custom_object(
        istio.GROUP,
        istio.VERSION,
        namespace,
        istio.PLURAL,
        manifest("virtualservice.yaml", namespace),
    )
    router = istio.IstioRouter(
        kube_api, namespace, ROLLOUT, IstioRouting(virtual_service=ROLLOUT, route_name="predict")
    )
    await run_stages(router, api, router.ref, strip_virtualservice)


async def test_stale_write_is_a_conflict_the_router_retries(kube_api: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)
    api.create_namespaced_custom_object(
        gateway_api.GROUP,
        gateway_api.VERSION,
        namespace,
        gateway_api.PLURAL,
        manifest("httproute.yaml", namespace),
    )
    router = gateway_api.GatewayAPIRouter(
        kube_api, namespace, ROLLOUT, GatewayAPIRouting(http_route=ROLLOUT, rule_index=1), port=8080
    )
    stale = await router.read()
    # someone else writes in between
    api.patch_namespaced_custom_object(
        gateway_api.GROUP,
        gateway_api.VERSION,
        namespace,
        gateway_api.PLURAL,
        ROLLOUT,
        {"spec": {"hostnames": ["fraud.example.com"]}},
        _content_type="application/merge-patch+json",
    )
    patch = compute_patch(router.editor, stale, DesiredRoutes(A, B, 5, 0))
    assert patch is not None
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            gateway_api.GROUP,
            gateway_api.VERSION,
            namespace,
            gateway_api.PLURAL,
            ROLLOUT,
            patch,
            _content_type="application/json-patch+json",
        )
    assert is_conflict(err.value), err.value.body

    # the router itself re-reads and lands on top of the other write
    assert await router.apply(DesiredRoutes(A, B, 5, 0)) is True
    stored = await router.read()
    assert stored["spec"]["hostnames"] == ["fraud.example.com"]
    assert (await router.observe()).percent_to("b") == 5
