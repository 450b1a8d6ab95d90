"""make_router picks the router spec.trafficRouting names and hands it the spec's settings."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from modelrollout.api.models import ModelRolloutSpec
from modelrollout.routing import make_router
from modelrollout.routing.gateway_api import GatewayAPIRouter, HTTPRouteEditor
from modelrollout.routing.istio import IstioRouter, VirtualServiceEditor
from modelrollout.routing.replicas import ReplicaRatioRouter


def spec(routing: dict[str, Any]) -> ModelRolloutSpec:
    return ModelRolloutSpec.model_validate(
        {
            "model": {"name": "fraud", "version": "2.4.0", "uri": "s3://models/fraud/2.4.0"},
            "replicas": 4,
            "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}},
            "service": {"port": 9090, "targetPort": 8080},
            "trafficRouting": routing,
            "stages": [{"name": "full", "weight": 100}],
        }
    )


@pytest.mark.parametrize(
    ("routing", "kind"),
    [
        ({"gatewayAPI": {"httpRoute": "fraud", "ruleIndex": 2}}, GatewayAPIRouter),
        ({"istio": {"virtualService": "fraud-vs", "routeName": "predict"}}, IstioRouter),
        ({"replicas": {}}, ReplicaRatioRouter),
    ],
)
def test_factory_picks_the_router(routing: dict[str, Any], kind: type) -> None:
    router = make_router(k8s.ApiClient(), "ml", "fraud", spec(routing), owner=None)
    assert isinstance(router, kind)


def test_factory_passes_the_settings() -> None:
    gateway = make_router(
        k8s.ApiClient(), "ml", "fraud", spec({"gatewayAPI": {"httpRoute": "fraud", "ruleIndex": 2}})
    )
    assert isinstance(gateway, GatewayAPIRouter)
    assert gateway.editor == HTTPRouteEditor(
        namespace="ml", rollout="fraud", route="fraud", rule_index=2, port=9090
    )

    istio = make_router(
        k8s.ApiClient(), "ml", "fraud", spec({"istio": {"virtualService": "fraud-vs"}})
    )
    assert isinstance(istio, IstioRouter)
    assert istio.editor == VirtualServiceEditor(
        namespace="ml", rollout="fraud", virtual_service="fraud-vs", route_name=None
    )

    owner = {"metadata": {"name": "fraud", "namespace": "ml", "uid": "u"}}
    replicas = make_router(k8s.ApiClient(), "ml", "fraud", spec({"replicas": {}}), owner=owner)
    assert isinstance(replicas, ReplicaRatioRouter)
    planner = replicas.planner
    assert (planner.replicas, planner.port, planner.target_port, planner.owner) == (
        4,
        9090,
        8080,
        owner,
    )
