"""Traffic routers: one module per provider and this tiny factory."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from modelrollout.api.models import ModelRolloutSpec, ReplicaRatioRouting
from modelrollout.kube.cache import ObjectCache
from modelrollout.routing.base import DesiredRoutes, RouteNotFound, RoutingError, TrafficRouter
from modelrollout.routing.gateway_api import GatewayAPIRouter
from modelrollout.routing.istio import IstioRouter
from modelrollout.routing.replicas import ReplicaRatioRouter

__all__ = ["DesiredRoutes", "RouteNotFound", "RoutingError", "TrafficRouter", "make_router"]


def make_router(
    api_client: k8s.ApiClient,
    namespace: str,
    rollout_name: str,
    spec: ModelRolloutSpec,
    owner: dict[str, Any] | None = None,
    cache: ObjectCache | None = None,
) -> TrafficRouter:
    """The router ``spec.trafficRouting`` names. ``owner`` (the ModelRollout object, or an
    ownerReference) owns what the router creates: only the replica-ratio router creates anything.
    ``cache``: route objects are observed from it when it has them."""
    routing = spec.traffic_routing
    if routing.gateway_api is not None:
        return GatewayAPIRouter(
            api_client,
            namespace,
            rollout_name,
            routing.gateway_api,
            port=spec.service.port,
            cache=cache,
        )
    if routing.istio is not None:
        return IstioRouter(api_client, namespace, rollout_name, routing.istio, cache=cache)
    return ReplicaRatioRouter(
        api_client,
        namespace,
        rollout_name,
        routing.replicas or ReplicaRatioRouting(),
        replicas=spec.replicas,
        port=spec.service.port,
        target_port=spec.service.target_port,
        owner=owner,
    )
