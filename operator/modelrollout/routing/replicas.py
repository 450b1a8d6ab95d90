"""Replica-ratio router: no mesh, weight approximated by how many pods of each slot serve.

One shared Service ``<name>`` selects ``modelrollout.dev/rollout: <name>``, i.e. the ready pods
of both slots, and kube-proxy spreads connections over them evenly. The candidate's share of the
traffic is therefore its share of the ready pods, and the router sets it by scaling the two slot
Deployments (``spec.replicas``). Mirroring is impossible without a proxy: a mirror > 0 is refused.

The replica rule (:func:`split_replicas`), for ``R = spec.replicas`` and candidate weight ``w``:

- no candidate named: stable R, the other slot left alone (the engine scales a slot it no
  longer runs to zero; a warming candidate keeps the one pod :meth:`ReplicaRatioRouter.replicas`
  gives it, which already takes its share of connections: there is no traffic-free warm-up
  without a mesh);
- ``w == 0``: stable R, candidate 0; ``w == 100``: stable 0, candidate R;
- otherwise candidate = ``w%`` of R rounded half *down* (ties favour the stable version), at
  least 1 and at most R; stable = R - candidate, but at least 1 so that both versions keep
  serving. So at most one extra pod runs, and only when R is too small to express ``w``
  (R=1 at 5% -> 1 stable + 1 candidate, i.e. 50%). The weight actually served is reported as
  :attr:`RouteState.actual_candidate` (candidate ready pods / all ready pods, in percent).

Which slot is stable and the weight asked for are recorded as annotations on the shared Service,
so :meth:`ReplicaRatioRouter.observe` can report them back after an operator restart. Scale-ups
are written before scale-downs, so the serving capacity never dips during a change.

The router owns the replica split: the reconciler sizes every slot it ensures with
:meth:`ReplicaRatioRouter.replicas`, so a candidate is never started at R. The router writes
only objects its rollout owns (ownerReference): a Service ``<name>`` or a slot Deployment
that belongs to anyone else is refused with :class:`NotOwned`, naming it, before any write.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelrollout.api.models import GROUP, ReplicaRatioRouting
from modelrollout.engine.types import RouteState
from modelrollout.kube.client import SlotNotOwned, check_owned
from modelrollout.kube.workloads import LABEL_ROLLOUT, MANAGED_BY, owner_reference
from modelrollout.routing._common import check_desired_services, route_state, slot_services
from modelrollout.routing.base import DesiredRoutes, RoutingError

log = structlog.get_logger("modelrollout.routing")

ANNOTATION_STABLE = f"{GROUP}/stable-service"
ANNOTATION_CANDIDATE = f"{GROUP}/candidate-service"
ANNOTATION_WEIGHT = f"{GROUP}/candidate-weight"

Body = dict[str, Any]


def split_replicas(total: int, weight: int) -> tuple[int, int]:
    """(stable, candidate) replica counts for candidate ``weight`` percent of ``total`` replicas.

    See the module docstring for the rule and its rationale.
    """
    if total < 0:
        raise ValueError(f"total replicas must be >= 0, got {total}")
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be 0..100, got {weight}")
    if total == 0:
        return 0, 0
    if weight == 0:
        return total, 0
    if weight == 100:
        return 0, total
    candidate = (2 * total * weight + 99) // 200  # total*weight/100 rounded half down
    candidate = min(max(candidate, 1), total)
    return max(total - candidate, 1), candidate


class NotOwned(RoutingError):
    """An object the router would write belongs to someone else."""


# ---------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Snapshot:
    """What the router reads: the shared Service and both slot Deployments (None = absent)."""

    service: Body | None
    deployments: dict[str, Body | None]


@dataclass(frozen=True)
class Plan:
    create_service: Body | None = None
    service_patch: Body | None = None
    # (deployment, replicas) in the order to write them: scale-ups first.
    scale: list[tuple[str, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.create_service is None and self.service_patch is None and not self.scale


def _replicas(deployment: Body) -> int:
    value = (deployment.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def _ready(deployment: Body | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


@dataclass(frozen=True)
class ReplicaPlanner:
    """The pure part: Snapshot + DesiredRoutes -> Plan, and Snapshot -> RouteState."""

    namespace: str
    rollout: str
    replicas: int
    port: int
    target_port: int | None = None
    owner: Body | None = None

    @property
    def service_name(self) -> str:
        return self.rollout

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL_ROLLOUT: self.rollout}

    def _ports(self) -> list[Body]:
        return [
            {
                "name": "http",
                "port": self.port,
                "targetPort": self.target_port or self.port,
                "protocol": "TCP",
            }
        ]

    def service_body(self, annotations: dict[str, str]) -> Body:
        metadata: Body = {
            "name": self.service_name,
            "namespace": self.namespace,
            "labels": {**MANAGED_BY, **self.selector},
            "annotations": annotations,
        }
        if self.owner is not None:
            # The reconciler hands over the ModelRollout object; an ownerReference works too.
            ref = owner_reference(self.owner) if "metadata" in self.owner else self.owner
            metadata["ownerReferences"] = [ref]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {"selector": self.selector, "ports": self._ports()},
        }

    def check_owned(self, snapshot: Snapshot) -> None:
        """Every object of the snapshot that exists must be this rollout's."""
        if self.owner is None:
            return
        found = [("Service", snapshot.service)]
        found += [("Deployment", d) for d in snapshot.deployments.values()]
        for kind, obj in found:
            if obj is None:
                continue
            try:
                check_owned(obj, self.owner, kind)
            except SlotNotOwned as exc:
                raise NotOwned(f"replica-ratio routing would scale or rewrite it: {exc}") from exc

    def check_service(self, service: Body) -> None:
        selector = (service.get("spec") or {}).get("selector")
        if selector != self.selector:
            raise RoutingError(
                f"Service {self.namespace}/{self.service_name} exists but selects {selector}; "
                f"replica-ratio routing needs it to select {self.selector} (both slots). "
                "Rename or delete that Service"
            )

    def targets(self, desired: DesiredRoutes) -> dict[str, int]:
        """Replicas per slot Deployment the route names; with no candidate only the stable one
        (the other slot is the engine's to scale down, or a warming candidate's)."""
        if desired.mirror:
            raise RoutingError(
                f"replica-ratio routing cannot mirror traffic (mirror {desired.mirror}% asked): "
                "shadow stages need gatewayAPI or istio routing"
            )
        check_desired_services(desired, self.rollout)
        if desired.candidate_service is None:
            return {desired.stable_service: self.replicas}
        stable, candidate = split_replicas(self.replicas, desired.candidate_weight)
        return {desired.stable_service: stable, desired.candidate_service: candidate}

    def replicas_for(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        """How many replicas slot ``service`` runs while the route is ``desired``: its share of
        the split; a slot the route does not name yet (a warming candidate) one pod."""
        if asked == 0:
            return 0
        return self.targets(desired).get(service, 1)

    @staticmethod
    def annotations(desired: DesiredRoutes) -> dict[str, str | None]:
        return {
            ANNOTATION_STABLE: desired.stable_service,
            ANNOTATION_CANDIDATE: desired.candidate_service,  # None deletes it in a merge patch
            ANNOTATION_WEIGHT: str(desired.candidate_weight),
        }

    def plan(self, snapshot: Snapshot, desired: DesiredRoutes) -> Plan:
        self.check_owned(snapshot)
        targets = self.targets(desired)
        for name, replicas in targets.items():
            if snapshot.deployments.get(name) is None and (
                replicas or name == desired.stable_service
            ):
                role = "stable" if name == desired.stable_service else "candidate"
                raise RoutingError(
                    f"Deployment {self.namespace}/{name} ({role} slot) does not exist; it must be "
                    "created before traffic is routed to it"
                )
        scale = [
            (name, replicas)
            for name, replicas in targets.items()
            if (current := snapshot.deployments.get(name)) is not None
            and _replicas(current) != replicas
        ]
        # Scale-ups before scale-downs: capacity never dips while the ratio changes.
        scale.sort(key=lambda item: item[1] < _replicas(snapshot.deployments[item[0]] or {}))

        wanted = self.annotations(desired)
        if snapshot.service is None:
            present = {k: v for k, v in wanted.items() if v is not None}
            return Plan(create_service=self.service_body(present), scale=scale)
        self.check_service(snapshot.service)
        current = (snapshot.service.get("metadata") or {}).get("annotations") or {}
        patch: Body = {}
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed:
            patch["metadata"] = {"annotations": changed}
        spec = snapshot.service.get("spec") or {}
        ports = [
            {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}
            for p in spec.get("ports") or []
        ]
        if ports != self._ports():
            patch["spec"] = {"ports": self._ports()}
        return Plan(service_patch=patch or None, scale=scale)

    def parse(self, snapshot: Snapshot) -> RouteState:
        """The split by identity: each named slot's share. The recorded weight stands while the
        named slots' replica counts are what the router would set for it (``split_replicas``
        cannot express every weight); counts scaled by anyone else give the shares they serve."""
        name = f"Service {self.namespace}/{self.service_name}"
        if snapshot.service is None:
            return RouteState(
                found=False,
                message=f"{name} does not exist yet; the first traffic change creates it",
            )
        self.check_owned(snapshot)
        self.check_service(snapshot.service)
        annotations = (snapshot.service.get("metadata") or {}).get("annotations") or {}
        stable = annotations.get(ANNOTATION_STABLE)
        if stable not in slot_services(self.rollout):
            return RouteState(found=False, message=f"{name} does not record a stable slot yet")
        candidate = annotations.get(ANNOTATION_CANDIDATE) or None
        counts = {
            service: _replicas(dep) if (dep := snapshot.deployments.get(service)) else 0
            for service in slot_services(self.rollout)
        }
        weight = int(annotations.get(ANNOTATION_WEIGHT) or 0) if candidate else 0
        try:
            targets = self.targets(DesiredRoutes(stable, candidate, weight, 0))
        except (RoutingError, ValueError):
            targets = {}
        named = [stable] + ([candidate] if candidate else [])
        if targets and all(counts[s] == targets[s] for s in named):
            weights = {stable: 100 - weight} | ({candidate: weight} if candidate else {})
            note = ""
        else:  # scaled behind our back: the shares the replica counts give
            weights = {s: counts[s] for s in named}
            note = "; replica counts differ from the recorded weight"
        state = route_state(name, self.rollout, weights, 0, None)
        ready = {s: _ready(snapshot.deployments.get(s)) for s in slot_services(self.rollout)}
        other = next(s for s in slot_services(self.rollout) if s != stable)
        total = sum(ready.values())
        return replace(
            state,
            actual_candidate=round(100 * ready[other] / total, 2) if total else None,
            message=state.message
            + " ("
            + ", ".join(f"{s} {counts[s]} replicas, {ready[s]} ready" for s in counts)
            + f"){note}",
        )


# ------------------------------------------------------------------------ I/O part


class WorkloadAPI(Protocol):
    """The few Kubernetes calls the router makes (plain dicts in and out)."""

    async def get_deployment(self, name: str) -> Body | None: ...
    async def scale_deployment(self, name: str, replicas: int) -> None: ...
    async def get_service(self, name: str) -> Body | None: ...
    async def create_service(self, body: Body) -> None: ...
    async def patch_service(self, name: str, patch: Body) -> None: ...


class KubeWorkloadAPI:
    """:class:`WorkloadAPI` over the official client; sync calls run in a worker thread."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)

    @staticmethod
    def _json(response: Any) -> Body:
        data: Body = json.loads(response.data)
        return data

    async def get_deployment(self, name: str) -> Body | None:
        def call() -> Body | None:
            try:
                return self._json(
                    self.apps.read_namespaced_deployment(
                        name, self.namespace, _preload_content=False
                    )
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        return await asyncio.to_thread(call)

    @staticmethod
    async def _write(call: Any, *args: Any, **kwargs: Any) -> None:
        """Run a write and drop its answer: an unread ``_preload_content=False`` response keeps
        its connection out of urllib3's pool (the next call would open a new TLS connection)."""
        response = await asyncio.to_thread(call, *args, _preload_content=False, **kwargs)
        response.drain_conn()

    async def scale_deployment(self, name: str, replicas: int) -> None:
        await self._write(
            self.apps.patch_namespaced_deployment,
            name,
            self.namespace,
            {"spec": {"replicas": replicas}},
        )

    async def get_service(self, name: str) -> Body | None:
        def call() -> Body | None:
            try:
                return self._json(
                    self.core.read_namespaced_service(name, self.namespace, _preload_content=False)
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        return await asyncio.to_thread(call)

    async def create_service(self, body: Body) -> None:
        payload: Any = body  # the client takes a plain dict as well as a V1Service

        await self._write(self.core.create_namespaced_service, self.namespace, payload)

    async def patch_service(self, name: str, patch: Body) -> None:
        await self._write(
            self.core.patch_namespaced_service,
            name,
            self.namespace,
            patch,
            _content_type="application/merge-patch+json",
        )


class ReplicaRatioRouter:
    """The I/O part: reads a Snapshot, carries out the Plan."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        rollout_name: str,
        routing: ReplicaRatioRouting,
        *,
        replicas: int,
        port: int,
        target_port: int | None = None,
        owner: Body | None = None,
        workloads: WorkloadAPI | None = None,
    ) -> None:
        self.routing = routing
        self.planner = ReplicaPlanner(namespace, rollout_name, replicas, port, target_port, owner)
        self.api: WorkloadAPI = workloads or KubeWorkloadAPI(api_client, namespace)

    async def _snapshot(self) -> Snapshot:
        a, b = slot_services(self.planner.rollout)
        service, dep_a, dep_b = await asyncio.gather(
            self.api.get_service(self.planner.service_name),
            self.api.get_deployment(a),
            self.api.get_deployment(b),
        )
        return Snapshot(service=service, deployments={a: dep_a, b: dep_b})

    async def apply(self, desired: DesiredRoutes) -> bool:
        plan = self.planner.plan(await self._snapshot(), desired)
        if plan.empty:
            return False
        # Replica counts first: a Service created afterwards starts out with the right ratio,
        # and the annotations recording the weight are written once it is in place.
        for name, replicas in plan.scale:
            await self.api.scale_deployment(name, replicas)
        if plan.create_service is not None:
            try:
                await self.api.create_service(plan.create_service)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await self.apply(desired)  # created concurrently: converge the one that exists
        if plan.service_patch is not None:
            await self.api.patch_service(self.planner.service_name, plan.service_patch)
        log.info(
            "replica ratio updated",
            service=f"{self.planner.namespace}/{self.planner.service_name}",
            scale=plan.scale,
            candidate_weight=desired.candidate_weight,
        )
        return True

    async def observe(self) -> RouteState:
        return self.planner.parse(await self._snapshot())

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        return self.planner.replicas_for(service, asked, desired)

    async def verify(self, desired: DesiredRoutes) -> bool:
        return self.planner.plan(await self._snapshot(), desired).empty

    async def finalize(self, stable_service: str) -> None:
        desired = DesiredRoutes(stable_service, None, 0, 0)
        snapshot = await self._snapshot()
        if snapshot.deployments.get(stable_service) is None:
            log.info(
                "stable Deployment already gone; nothing to release", deployment=stable_service
            )
            return
        if not self.planner.plan(snapshot, desired).empty:
            await self.apply(desired)
