"""Istio router: weights and mirroring in one http[] entry of a VirtualService.

The object is a ``networking.istio.io/v1beta1`` VirtualService in the rollout's namespace.

The managed entry is the one whose ``name`` equals ``spec.trafficRouting.istio.routeName``, or
the first entry when no name is given. In it the operator manages only:

- ``route[]``: one destination per rollout Service, stable first, then the candidate (kept at
  weight 0 while it exists without live traffic, removed once there is no candidate). Of each
  destination only ``destination.host`` and ``weight`` are written; other fields the user set
  (``destination.port``, ``headers``...) are kept, and a new destination copies them from the
  existing one (minus ``subset``, which belongs to the other host's DestinationRule).
- ``mirror.host`` and ``mirrorPercentage.value`` (the deprecated ``mirrorPercent`` is dropped
  when the operator writes the mirror); both removed when mirroring stops.

Hosts are recognised as ``svc``, ``svc.<ns>``, ``svc.<ns>.svc`` or ``svc.<ns>.svc.<domain>``;
an existing host keeps its spelling and a new one uses the spelling the entry already uses (the
short name when it has none). Match rules, retries, timeouts, other entries and a mirror to a
host the operator does not manage (while it does not need to mirror) stay untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from modelrollout.api.models import IstioRouting
from modelrollout.engine.types import RouteState
from modelrollout.kube.cache import ObjectCache
from modelrollout.kube.workloads import role_service_name
from modelrollout.routing._common import (
    Body,
    CustomObjectRouter,
    ObjectRef,
    check_desired_services,
    known_services,
    route_state,
    routing_error_foreign,
)
from modelrollout.routing.base import DesiredRoutes, RoutingError

GROUP = "networking.istio.io"
VERSION = "v1beta1"
PLURAL = "virtualservices"
KIND = "VirtualService"


def _host(route: dict[str, Any]) -> str:
    return str((route.get("destination") or {}).get("host") or "")


@dataclass(frozen=True)
class VirtualServiceEditor:
    """The pure part: renders and parses the managed http[] entry of one VirtualService."""

    namespace: str
    rollout: str
    virtual_service: str
    route_name: str | None

    @property
    def _obj(self) -> str:
        return f"{KIND} {self.namespace}/{self.virtual_service}"

    def service_of(self, host: str) -> str | None:
        """The rollout Service a host names, or None when it names anything else."""
        for service in known_services(self.rollout):
            if host == service:
                return service
            rest = host.removeprefix(f"{service}.{self.namespace}")
            if rest != host and (rest in ("", ".svc") or rest.startswith(".svc.")):
                return service
        return None

    def _entry(self, body: Body) -> tuple[int, dict[str, Any]]:
        entries: list[dict[str, Any]] = (body.get("spec") or {}).get("http") or []
        if self.route_name is None:
            if not entries:
                raise RoutingError(
                    f"{self._obj} has no http[] routes; add one for the operator to manage"
                )
            return 0, entries[0]
        for index, entry in enumerate(entries):
            if entry.get("name") == self.route_name:
                return index, entry
        names = ", ".join(repr(e["name"]) for e in entries if e.get("name")) or "none"
        raise RoutingError(
            f"{self._obj} has no http[] entry named {self.route_name!r} "
            f"(spec.trafficRouting.istio.routeName); named entries: {names}"
        )

    def _routes(self, index: int, entry: dict[str, Any]) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = entry.get("route") or []
        if not routes:
            what = ", ".join(k for k in ("redirect", "directResponse", "delegate") if k in entry)
            raise RoutingError(
                f"{self._obj} http[{index}] has no route[] destinations"
                + (f" (it has {what})" if what else "")
                + "; the operator only manages an entry that forwards to the model. Name that "
                "entry in spec.trafficRouting.istio.routeName, or give this one a destination "
                f"{role_service_name(self.rollout, 'stable')}"
            )
        foreign = [_host(r) or "<no host>" for r in routes if self.service_of(_host(r)) is None]
        if foreign:
            raise routing_error_foreign(
                self._obj, f"http[{index}]", foreign, known_services(self.rollout)
            )
        return routes

    def _our_mirror(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        mirror = entry.get("mirror")
        if mirror and self.service_of(str(mirror.get("host") or "")) is not None:
            result: dict[str, Any] = mirror
            return result
        return None

    # ------------------------------------------------------------------ render

    def render(self, body: Body, desired: DesiredRoutes) -> Body:
        check_desired_services(desired, self.rollout)
        new = copy.deepcopy(body)
        index, entry = self._entry(new)
        routes = self._routes(index, entry)
        our_mirror = self._our_mirror(entry)
        known_hosts = [_host(r) for r in routes] + ([str(our_mirror["host"])] if our_mirror else [])
        suffix = next(
            (h[len(s) :] for h in known_hosts if (s := self.service_of(h)) is not None), ""
        )

        targets = [(desired.stable_service, desired.stable_weight)]
        if desired.candidate_service is not None:
            targets.append((desired.candidate_service, desired.candidate_weight))
        entry["route"] = [self._destination(routes, s, w, suffix) for s, w in targets]

        if desired.mirror and desired.candidate_service is not None:
            current = entry.get("mirror")
            if current and our_mirror is None:
                raise RoutingError(
                    f"{self._obj} http[{index}] already mirrors to {current.get('host')!r}, which "
                    "the operator does not manage; it cannot add the shadow mirror to "
                    f"{desired.candidate_service}. Remove that mirror or manage another entry"
                )
            mirror = copy.deepcopy(our_mirror) if our_mirror else {}
            if self.service_of(str(mirror.get("host") or "")) != desired.candidate_service:
                mirror.pop("subset", None)
                mirror["host"] = desired.candidate_service + suffix
            entry["mirror"] = mirror
            percentage = entry.get("mirrorPercentage") or {}
            if percentage.get("value") != desired.mirror:
                entry["mirrorPercentage"] = {"value": desired.mirror}
            entry.pop("mirrorPercent", None)
        elif our_mirror is not None:
            for key in ("mirror", "mirrorPercentage", "mirrorPercent"):
                entry.pop(key, None)
        return new

    def _destination(
        self, routes: list[dict[str, Any]], service: str, weight: int, suffix: str
    ) -> dict[str, Any]:
        same = next((r for r in routes if self.service_of(_host(r)) == service), None)
        if same is not None:
            route = copy.deepcopy(same)
        else:
            route = copy.deepcopy(routes[0]) if routes else {}
            destination = route.setdefault("destination", {})
            destination.pop("subset", None)
            destination["host"] = service + suffix
        route["weight"] = weight
        return route

    # ------------------------------------------------------------------- parse

    def parse(self, body: Body) -> RouteState:
        index, entry = self._entry(body)
        routes = self._routes(index, entry)
        weights: dict[str, int] = {}
        for route in routes:
            service = self.service_of(_host(route)) or ""
            weight = route.get("weight")
            if weight is None:
                weight = 100 if len(routes) == 1 else 0
            weights[service] = weights.get(service, 0) + int(weight)

        our_mirror = self._our_mirror(entry)
        mirror = 0
        mirror_target = None
        if our_mirror is not None:
            mirror_target = self.service_of(str(our_mirror["host"]))
            if (entry.get("mirrorPercentage") or {}).get("value") is not None:
                mirror = round(float(entry["mirrorPercentage"]["value"]))
            elif entry.get("mirrorPercent") is not None:
                mirror = int(entry["mirrorPercent"])
            else:
                mirror = 100

        where = f"{self._obj} http[{index}]"
        return route_state(where, self.rollout, weights, mirror, mirror_target)


class IstioRouter(CustomObjectRouter):
    """The I/O part for a VirtualService; see the module docstring for what it manages."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        rollout_name: str,
        routing: IstioRouting,
        *,
        custom_api: Any = None,
        cache: ObjectCache | None = None,
    ) -> None:
        editor = VirtualServiceEditor(
            namespace=namespace,
            rollout=rollout_name,
            virtual_service=routing.virtual_service,
            route_name=routing.route_name,
        )
        ref = ObjectRef(GROUP, VERSION, PLURAL, KIND, namespace, routing.virtual_service)
        super().__init__(
            ref, editor, custom_api or k8s.CustomObjectsApi(api_client), cache, rollout_name
        )
