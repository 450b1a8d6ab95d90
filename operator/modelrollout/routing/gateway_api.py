"""Gateway API router: weights and mirroring in one rule of an HTTPRoute.

The object is a ``gateway.networking.k8s.io/v1`` HTTPRoute in the rollout's namespace.

The operator manages exactly two things in ``spec.rules[ruleIndex]``:

- ``backendRefs``: the stable Service first, then the candidate Service (kept at weight 0 while
  the candidate exists but gets no live traffic, e.g. in a shadow stage; removed once there is
  no candidate). Port = the rollout's service port.
- one ``RequestMirror`` filter whose ``backendRef`` is the candidate Service, with
  ``requestMirror.percent`` (omitted at 100, the field's meaning when absent, so full mirroring
  also works on Gateway API releases older than 1.2); removed when mirroring stops.

Every other rule, match, filter (including other filters of the managed rule), hostname,
parentRef, label and annotation is left exactly as the user wrote it. The managed rule may only
hold backends that are the rollout's own Services (the slots ``<name>-a`` / ``<name>-b``, or the
role Services ``<name>-stable`` / ``<name>-canary`` a route may be written with, which the
operator replaces by the slot they stand for); anything else is refused with a RoutingError
rather than silently dropped. So is a rule without backends (a redirect, say): the operator
never turns it into one that forwards.

What is read back names each Service with its share, so the engine judges the route by who it
points at, not by the order of its backends. Where Gateways report on the route
(``status.parents``), a generation that a parent has not accepted yet is read back as pending:
written, not yet in force.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from modelrollout.api.models import GatewayAPIRouting
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

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
KIND = "HTTPRoute"
REQUEST_MIRROR = "RequestMirror"


def _describe_ref(ref: dict[str, Any]) -> str:
    group = ref.get("group") or ""
    kind = ref.get("kind") or "Service"
    text = f"{kind}{'.' + group if group else ''}/{ref.get('name')}"
    if ref.get("namespace"):
        text += f" (namespace {ref['namespace']})"
    return text


def mirror_percent(filter_: dict[str, Any]) -> int:
    """Percent of requests a RequestMirror filter copies: ``percent``, ``fraction`` or 100."""
    spec = filter_.get("requestMirror") or {}
    if spec.get("percent") is not None:
        return int(spec["percent"])
    fraction = spec.get("fraction")
    if fraction:
        denominator = int(fraction.get("denominator") or 100)
        return round(100 * int(fraction.get("numerator") or 0) / denominator) if denominator else 0
    return 100


def not_accepted(body: Body) -> str | None:
    """Why the route's current generation is not in force yet, from ``status.parents``: a
    parent that reports it not Accepted, or Accepted for an older generation. None when every
    reporting parent accepted it, or none reports (no controller writes route status)."""
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    for parent in (body.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        who = f"parent {ref.get('kind') or 'Gateway'}/{ref.get('name')}"
        accepted = next(
            (c for c in parent.get("conditions") or [] if c.get("type") == "Accepted"), None
        )
        if accepted is None:
            continue
        seen = int(accepted.get("observedGeneration") or 0)
        if accepted.get("status") != "True":
            return f"{who} does not accept it: {accepted.get('reason')}: {accepted.get('message')}"
        if seen and generation and seen < generation:
            return f"{who} accepted generation {seen}, not yet {generation}"
    return None


@dataclass(frozen=True)
class HTTPRouteEditor:
    """The pure part: renders and parses the managed rule of one HTTPRoute."""

    namespace: str
    rollout: str
    route: str
    rule_index: int
    port: int

    @property
    def _obj(self) -> str:
        return f"{KIND} {self.namespace}/{self.route}"

    def _rule(self, body: Body) -> dict[str, Any]:
        rules = (body.get("spec") or {}).get("rules") or []
        if not 0 <= self.rule_index < len(rules):
            raise RoutingError(
                f"{self._obj} has {len(rules)} rule(s) but spec.trafficRouting.gatewayAPI."
                f"ruleIndex is {self.rule_index}; add the rule or fix ruleIndex"
            )
        rule: dict[str, Any] = rules[self.rule_index]
        return rule

    def is_ours(self, ref: dict[str, Any]) -> bool:
        """A backendRef to one of the rollout's Services, in the route's own namespace."""
        return (
            (ref.get("group") or "") == ""
            and (ref.get("kind") or "Service") == "Service"
            and ref.get("namespace") in (None, self.namespace)
            and ref.get("name") in known_services(self.rollout)
        )

    def is_our_mirror(self, filter_: dict[str, Any]) -> bool:
        if filter_.get("type") != REQUEST_MIRROR:
            return False
        return self.is_ours((filter_.get("requestMirror") or {}).get("backendRef") or {})

    def _backend_refs(self, rule: dict[str, Any]) -> list[dict[str, Any]]:
        refs: list[dict[str, Any]] = rule.get("backendRefs") or []
        if not refs:
            kinds = sorted({str(f.get("type")) for f in rule.get("filters") or []})
            raise RoutingError(
                f"{self._obj} rule {self.rule_index} has no backendRefs"
                + (f" (its filters: {', '.join(kinds)})" if kinds else "")
                + "; the operator only manages a rule that forwards to the model. Point "
                "spec.trafficRouting.gatewayAPI.ruleIndex at that rule, or give this one a "
                f"backendRef to {role_service_name(self.rollout, 'stable')}"
            )
        foreign = [_describe_ref(r) for r in refs if not self.is_ours(r)]
        if foreign:
            raise routing_error_foreign(
                self._obj, f"rule {self.rule_index}", foreign, known_services(self.rollout)
            )
        return refs

    # ------------------------------------------------------------------ render

    def render(self, body: Body, desired: DesiredRoutes) -> Body:
        check_desired_services(desired, self.rollout)
        new = copy.deepcopy(body)
        rule = self._rule(new)
        refs = self._backend_refs(rule)
        targets = [(desired.stable_service, desired.stable_weight)]
        if desired.candidate_service is not None:
            targets.append((desired.candidate_service, desired.candidate_weight))
        rule["backendRefs"] = [
            self._backend_ref(refs, service, weight) for service, weight in targets
        ]

        filters: list[dict[str, Any]] | None = rule.get("filters")
        had_ours = any(self.is_our_mirror(f) for f in filters or [])
        if desired.mirror or had_ours:
            new_filters = self._filters(filters or [], desired)
            if new_filters:
                rule["filters"] = new_filters
            else:
                del rule["filters"]  # only our mirror was there; leave the rule as the user had it
        return new

    def _backend_ref(self, refs: list[dict[str, Any]], service: str, weight: int) -> dict[str, Any]:
        """The entry for ``service`` (or the first one as a pattern) with name, port and weight."""
        template = next((r for r in refs if r.get("name") == service), refs[0] if refs else None)
        ref = copy.deepcopy(template) if template is not None else {}
        ref["name"] = service
        ref["port"] = self.port
        ref["weight"] = weight
        return ref

    def _filters(
        self, filters: list[dict[str, Any]], desired: DesiredRoutes
    ) -> list[dict[str, Any]]:
        ours = [i for i, f in enumerate(filters) if self.is_our_mirror(f)]
        kept = [f for i, f in enumerate(filters) if i not in ours]
        if desired.mirror and desired.candidate_service is not None:
            template = filters[ours[0]] if ours else {"type": REQUEST_MIRROR}
            # Our filter keeps its place; a new one goes after the user's filters.
            mirror = self._mirror(template, desired.candidate_service, desired.mirror)
            kept.insert(ours[0] if ours else len(kept), mirror)
        return kept

    def _mirror(self, template: dict[str, Any], service: str, percent: int) -> dict[str, Any]:
        filter_ = copy.deepcopy(template)
        spec = filter_.setdefault("requestMirror", {})
        ref = spec.setdefault("backendRef", {})
        ref["name"] = service
        ref["port"] = self.port
        spec.pop("fraction", None)
        if percent < 100 or "percent" in spec:
            spec["percent"] = percent
        return filter_

    # ------------------------------------------------------------------- parse

    def parse(self, body: Body) -> RouteState:
        rule = self._rule(body)
        refs = self._backend_refs(rule)
        weights: dict[str, int] = {}
        for ref in refs:
            weight = ref.get("weight")
            weights[ref["name"]] = weights.get(ref["name"], 0) + (
                1 if weight is None else int(weight)
            )
        mirrors = [f for f in rule.get("filters") or [] if self.is_our_mirror(f)]
        mirror = mirror_percent(mirrors[0]) if mirrors else 0
        mirror_target = mirrors[0]["requestMirror"]["backendRef"]["name"] if mirrors else None
        return route_state(
            f"{self._obj} rule {self.rule_index}",
            self.rollout,
            weights,
            mirror,
            mirror_target,
            pending=not_accepted(body),
        )


class GatewayAPIRouter(CustomObjectRouter):
    """The I/O part for an HTTPRoute; see the module docstring for what it manages."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        rollout_name: str,
        routing: GatewayAPIRouting,
        *,
        port: int,
        custom_api: Any = None,
        cache: ObjectCache | None = None,
    ) -> None:
        editor = HTTPRouteEditor(
            namespace=namespace,
            rollout=rollout_name,
            route=routing.http_route,
            rule_index=routing.rule_index,
            port=port,
        )
        ref = ObjectRef(GROUP, VERSION, PLURAL, KIND, namespace, routing.http_route)
        super().__init__(
            ref, editor, custom_api or k8s.CustomObjectsApi(api_client), cache, rollout_name
        )
