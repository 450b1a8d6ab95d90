"""Shared machinery of the routers that edit one custom object (HTTPRoute, VirtualService).

Each such router is split in two:

- a pure *editor* (``render(body, desired) -> new body`` and ``parse(body) -> RouteState``) that
  knows the object's schema and touches only the paths the operator manages;
- :class:`CustomObjectRouter`, the thin I/O part: read the object, diff the editor's rendering
  against it into a JSON patch guarded by a ``test`` of ``metadata.resourceVersion``, write it,
  and on a conflict re-read and recompute (bounded retries with backoff).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

import jsonpatch
import structlog
from kubernetes.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from modelrollout.engine.types import RouteShare, RouteState
from modelrollout.kube.cache import ObjectCache
from modelrollout.kube.workloads import (
    ROLES,
    role_of_service,
    role_service_name,
    slot_name,
    slot_of_service,
)
from modelrollout.routing.base import DesiredRoutes, RouteNotFound, RoutingError

log = structlog.get_logger("modelrollout.routing")

Body = dict[str, Any]
JsonPatch = list[dict[str, Any]]

RESOURCE_VERSION_PATH = "/metadata/resourceVersion"


def slot_services(rollout: str) -> tuple[str, str]:
    """The two slot Services the operator routes to: ``<name>-a`` and ``<name>-b``."""
    return slot_name(rollout, "a"), slot_name(rollout, "b")


def known_services(rollout: str) -> tuple[str, ...]:
    """The Services a managed rule may name: the two slots, and the role Services
    (``<name>-stable``, ``<name>-canary``) a route may have been written with; the operator
    rewrites the latter to the slot they stand for."""
    return (*slot_services(rollout), *(role_service_name(rollout, r) for r in ROLES))


def check_desired_services(desired: DesiredRoutes, rollout: str) -> None:
    """The engine only ever routes to the rollout's own slot Services; anything else is a bug."""
    ours = slot_services(rollout)
    for role, service in (
        ("stable", desired.stable_service),
        ("candidate", desired.candidate_service),
    ):
        if service is not None and service not in ours:
            raise ValueError(
                f"{role} Service {service!r} is not one of rollout {rollout!r}'s slot "
                f"Services {ours}"
            )


def json_patch(current: Body, new: Body) -> JsonPatch | None:
    """The JSON patch turning ``current`` into ``new``, guarded by a resourceVersion test.

    None when nothing changes, so an idempotent re-apply writes nothing.
    """
    ops: JsonPatch = jsonpatch.make_patch(current, new).patch
    if not ops:
        return None
    if jsonpatch.apply_patch(current, ops) != new:  # never trust a diff blindly
        ops = [{"op": "replace", "path": "/spec", "value": new["spec"]}]
    resource_version = (current.get("metadata") or {}).get("resourceVersion")
    if not resource_version:
        raise ValueError(
            "the object has no metadata.resourceVersion; it was not read from the API server"
        )
    return [{"op": "test", "path": RESOURCE_VERSION_PATH, "value": resource_version}, *ops]


def is_status_body(body: object) -> bool:
    """Whether an error response's body is a Kubernetes ``Status`` (an object that does not
    exist) rather than the plain text of a path the apiserver does not serve."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("kind") == "Status"


def is_conflict(exc: BaseException) -> bool:
    """A write lost a race: 409 Conflict, or a JSON patch that no longer applies.

    The API server answers a patch that does not apply (our resourceVersion ``test`` op failed,
    or a path we edit changed) with a bare 422 "the server rejected our request due to an error
    in our request" and no field causes. The patch was computed from the version we read, so
    that can only mean the object changed: re-read and recompute. A schema violation is a 422
    too, but it names the offending fields (``details.causes``) and is not retried.
    """
    if not isinstance(exc, ApiException):
        return False
    if exc.status == 409:
        return True
    if exc.status != 422:
        return False
    try:
        status = json.loads(exc.body or "")
    except ValueError:
        return False
    return isinstance(status, dict) and not (status.get("details") or {}).get("causes")


class RouteEditor(Protocol):
    """The pure part of a router."""

    def render(self, body: Body, desired: DesiredRoutes) -> Body:
        """``body`` with the managed paths set to ``desired``, as a new dict (``body`` is kept)."""
        ...

    def parse(self, body: Body) -> RouteState:
        """What the object routes now. Raises RoutingError when the operator cannot manage it."""
        ...


def compute_patch(editor: RouteEditor, body: Body, desired: DesiredRoutes) -> JsonPatch | None:
    return json_patch(body, editor.render(body, desired))


@dataclass(frozen=True)
class ObjectRef:
    group: str
    version: str
    plural: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class CustomObjectRouter:
    """Applies a :class:`RouteEditor` to one namespaced custom object through CustomObjectsApi."""

    retry_attempts = 5
    retry_initial_wait = 0.05  # seconds; doubles per attempt, with jitter
    retry_max_wait = 1.0

    def __init__(
        self,
        ref: ObjectRef,
        editor: RouteEditor,
        custom_api: Any,
        cache: ObjectCache | None = None,
        rollout: str | None = None,
    ) -> None:
        self.ref = ref
        self.editor = editor
        self._api = custom_api
        self._cache = cache
        self._rollout = rollout

    @property
    def _kind(self) -> tuple[str, str, str]:
        return (self.ref.group, self.ref.version, self.ref.plural)

    async def read(self) -> Body:
        def call() -> Body:
            try:
                body: Body = self._api.get_namespaced_custom_object(
                    group=self.ref.group,
                    version=self.ref.version,
                    namespace=self.ref.namespace,
                    plural=self.ref.plural,
                    name=self.ref.name,
                )
            except ApiException as exc:
                if exc.status == 404 and not is_status_body(exc.body):
                    # A plain "404 page not found": the path itself is not served.
                    raise RouteNotFound(
                        f"the apiserver does not serve {self.ref.plural}.{self.ref.group}/"
                        f"{self.ref.version}: its CRD is not installed (or the apiserver is "
                        f"still starting); {self.ref} cannot be read"
                    ) from exc
                if exc.status == 404:
                    raise RouteNotFound(
                        f"{self.ref} not found ({self.ref.group}/{self.ref.version}); "
                        "create it or fix spec.trafficRouting"
                    ) from exc
                raise
            return body

        return await asyncio.to_thread(call)

    async def _write(self, patch: JsonPatch) -> Body:
        def call() -> Body:
            written: Body = self._api.patch_namespaced_custom_object(
                group=self.ref.group,
                version=self.ref.version,
                namespace=self.ref.namespace,
                plural=self.ref.plural,
                name=self.ref.name,
                body=patch,
                _content_type="application/json-patch+json",
            )
            return written

        return await asyncio.to_thread(call)

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(is_conflict),
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=self.retry_initial_wait, max=self.retry_max_wait)
            + wait_random(0, self.retry_initial_wait),
            reraise=True,
        )

    async def apply(self, desired: DesiredRoutes) -> bool:
        async for attempt in self._retrying():
            with attempt:
                # The first attempt patches the cached version: the patch's resourceVersion
                # test makes the apiserver refuse it if that is stale (someone wrote since),
                # and the retry reads afresh. A GET per route write saved (a fifth of the
                # worker threads' calls at 1,000 rollouts, and a round trip before the write).
                body = self._cached() if attempt.retry_state.attempt_number == 1 else None
                if body is None:
                    body = await self.read()
                patch = compute_patch(self.editor, body, desired)
                if patch is None:
                    return False
                if self._cache is None:
                    written = await self._write(patch)
                else:
                    # The next tick reads back what was written, however late the watch is,
                    # and the write's own watch event wakes nobody.
                    ref = self.ref
                    with self._cache.own_write(self._kind, ref.namespace, ref.name) as answer:
                        written = await self._write(patch)
                        if isinstance(written, dict):
                            answer(written)
                log.info(
                    "route updated",
                    object=str(self.ref),
                    stable=desired.stable_service,
                    candidate=desired.candidate_service,
                    candidate_weight=desired.candidate_weight,
                    mirror=desired.mirror,
                    attempt=attempt.retry_state.attempt_number,
                )
                return True
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _cached(self) -> Body | None:
        if self._cache is None:
            return None
        return self._cache.get(self._kind, self.ref.namespace, self.ref.name)

    async def observe(self) -> RouteState:
        """What the object routes now: from the watch cache when it has the object (a change
        shows a tick later at worst), else read. :meth:`apply` patches the cached version
        too, guarded by its resourceVersion; :meth:`verify` always reads afresh."""
        if self._cache is not None and self._rollout is not None:
            # a change of the route by someone else wakes the rollout
            self._cache.follow_route(self._kind, self.ref.namespace, self.ref.name, self._rollout)
        body = self._cached()
        if body is None:
            body = await self.read()
        state = self.editor.parse(body)
        return replace(state, version=(body.get("metadata") or {}).get("resourceVersion"))

    async def verify(self, desired: DesiredRoutes) -> bool:
        return compute_patch(self.editor, await self.read(), desired) is None

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        return asked  # the route weights traffic; every slot runs what the engine asks

    async def finalize(self, stable_service: str) -> None:
        try:
            await self.apply(DesiredRoutes(stable_service, None, 0, 0))
        except RouteNotFound:
            log.info("route already gone; nothing to release", object=str(self.ref))


def route_state(
    where: str,
    rollout: str,
    weights: dict[str, int],
    mirror: int,
    mirror_target: str | None,
    pending: str | None = None,
) -> RouteState:
    """RouteState from the weight per Service and our mirror, by identity: each Service with
    the slot it is, its relative weight turned into a percentage of live traffic."""
    total = sum(weights.values())

    def percent(service: str) -> int:
        return round(100 * weights.get(service, 0) / total) if total else 0

    shares = tuple(
        RouteShare(
            service,
            slot_of_service(rollout, service),
            percent(service),
            role_of_service(rollout, service),
        )
        for service in weights
    )
    listed = ", ".join(f"{s.service} {s.percent}%" for s in shares) or "no backends"
    mirrored = f"mirror {mirror}% to {mirror_target}" if mirror else "no mirror"
    return RouteState(
        found=True,
        shares=shares,
        mirror=mirror,
        mirror_slot=slot_of_service(rollout, mirror_target) if mirror_target else None,
        pending=pending,
        message=f"{where}: {listed}, {mirrored}" + (f" ({pending})" if pending else ""),
    )


def routing_error_foreign(
    obj: str, where: str, foreign: list[str], ours: tuple[str, ...]
) -> RoutingError:
    return RoutingError(
        f"{obj} {where} sends traffic to {', '.join(foreign)}, which the operator does not manage; "
        f"it may only point at the rollout's Services {', '.join(ours)}. Move the other "
        "backends to a rule of their own, or point this one at the rollout's Services"
    )
