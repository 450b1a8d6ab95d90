"""The Kubernetes calls the reconciler makes: slots, status, secrets.

The official client is synchronous; every call here runs in a worker thread so the operator's
event loop never blocks on the network. With an :class:`~modelrollout.kube.cache.ObjectCache`,
Deployments and Services are read from it when it has them (see there for when that is safe).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelrollout.api.models import GROUP, PLURAL, VERSION, ModelRef, ModelRolloutSpec
from modelrollout.engine.types import Slot
from modelrollout.kube.cache import DEPLOYMENTS, SERVICES, ObjectCache
from modelrollout.kube.workloads import (
    ANNOTATION_DIGEST,
    ANNOTATION_URI,
    ANNOTATION_VERSION,
    ROLES,
    build_deployment,
    build_role_service,
    build_service,
    slot_name,
)


class SecretNotFound(Exception):
    """A Secret or key a rollout references does not exist."""


class SlotNotOwned(Exception):
    """A Deployment or Service with a slot's name exists but belongs to someone else.

    The operator never adopts or rewrites an object it did not create: whoever may create a
    ModelRollout must not be able to take over another workload by naming the rollout after it.
    """


def check_owned(obj: dict[str, Any], owner: dict[str, Any], kind: str) -> None:
    """Raise :class:`SlotNotOwned` unless ``obj`` is owned by ``owner``: the ModelRollout
    object, or an ownerReference to it."""
    ident = owner.get("metadata") or owner
    uid = ident.get("uid")
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    if uid and any(ref.get("uid") == uid for ref in refs):
        return
    meta = obj.get("metadata") or {}
    where = meta.get("namespace") or ident.get("namespace")
    raise SlotNotOwned(
        f"{kind} {where + '/' if where else ''}{meta.get('name')} exists and is not owned by "
        f"ModelRollout {ident.get('name')}; the operator does not take over objects it did not "
        "create: delete or rename it"
    )


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


_RESOURCE_VERSION = re.compile(rb'"resourceVersion":"(\d+)"')


def _resource_version_of(response: Any) -> str | None:
    """The written object's new resourceVersion, from the head of a write's answer (metadata
    comes first and its resourceVersion before managedFields), the rest dropped unparsed."""
    head = response.read(8192)
    _release(response)
    found = _RESOURCE_VERSION.search(head or b"")
    return found.group(1).decode() if found else None


def _release(response: Any) -> None:
    """Read and drop a write's answer. With ``_preload_content=False`` an unread response keeps
    its connection out of urllib3's pool, so the next call opens a new TLS connection."""
    response.drain_conn()


def _template_identity(deployment: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    annotations = (
        ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    ).get("annotations") or {}
    return (
        annotations.get(ANNOTATION_VERSION),
        annotations.get(ANNOTATION_URI),
        annotations.get(ANNOTATION_DIGEST),
    )


def _service_matches(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    cur_spec = current.get("spec") or {}
    ports = [
        {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}
        for p in cur_spec.get("ports") or []
    ]
    return bool(
        cur_spec.get("selector") == wanted["spec"]["selector"] and ports == wanted["spec"]["ports"]
    )


class KubeClient:
    def __init__(self, api_client: k8s.ApiClient, cache: ObjectCache | None = None) -> None:
        self.api_client = api_client
        self.cache = cache
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    # ------------------------------------------------------------------ reads

    async def get_deployment(
        self, namespace: str, name: str, *, confirm_absence: bool = False
    ) -> dict[str, Any] | None:
        """The Deployment (from the cache when it has it: read it, never modify it), or None.

        With a live cache an absent Deployment is taken as absent (a slot that does not exist
        yet, e.g. slot b before the first rollout, would otherwise cost a GET on every tick);
        ``confirm_absence`` asks the apiserver instead, before anything is created.
        """
        if self.cache is not None:
            cached = self.cache.get(DEPLOYMENTS, namespace, name)
            if cached is not None:
                return cached
            if not confirm_absence and self.cache.live(DEPLOYMENTS):
                return None

        def call() -> dict[str, Any] | None:
            try:
                return _json(
                    self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        return await asyncio.to_thread(call)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        def call() -> str:
            try:
                secret = _json(
                    self.core.read_namespaced_secret(name, namespace, _preload_content=False)
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise SecretNotFound(
                        f'Secret "{name}" not found in namespace "{namespace}"'
                    ) from exc
                if exc.status == 403:
                    raise SecretNotFound(
                        f'Secret "{name}" in namespace "{namespace}" is not readable '
                        "by the operator"
                    ) from exc
                raise
            data = secret.get("data") or {}
            if key not in data:
                raise SecretNotFound(f'Secret "{name}" has no key "{key}"')
            return base64.b64decode(data[key]).decode("utf-8")

        return await asyncio.to_thread(call)

    # ----------------------------------------------------------------- writes

    async def ensure_slot(
        self,
        owner: dict[str, Any],
        spec: ModelRolloutSpec,
        slot: Slot,
        model: ModelRef,
        replicas: int,
    ) -> bool:
        """Create or update the slot's Service and Deployment; True when anything was written.

        A Deployment already running ``model`` only has its replica count adjusted: its pod template
        is never rewritten, so a role switch or a spec edit does not restart model servers.
        """
        namespace = owner["metadata"]["namespace"]
        name = slot_name(owner["metadata"]["name"], slot)
        wrote = await self._ensure_service(owner, build_service(owner, spec, slot))
        current = await self.get_deployment(namespace, name, confirm_absence=True)
        wanted = build_deployment(owner, spec, slot, model, replicas)

        def create() -> None:
            _release(
                self.apps.create_namespaced_deployment(
                    namespace, cast(Any, wanted), _preload_content=False
                )
            )

        def patch(body: Any) -> None:
            _release(
                self.apps.patch_namespaced_deployment(name, namespace, body, _preload_content=False)
            )

        if current is None:
            await asyncio.to_thread(create)
            return True
        check_owned(current, owner, "Deployment")
        if _template_identity(current) != (model.version, model.uri, model.digest):
            # A new model for this slot: replace the template (a rolling update of this slot only).
            await asyncio.to_thread(
                patch,
                [
                    {
                        "op": "replace",
                        "path": "/spec/template",
                        "value": wanted["spec"]["template"],
                    },
                    {"op": "replace", "path": "/spec/replicas", "value": replicas},
                ],
            )
            return True
        if (current.get("spec") or {}).get("replicas") != replicas:
            await asyncio.to_thread(patch, {"spec": {"replicas": replicas}})
            return True
        return wrote

    async def ensure_roles(
        self, owner: dict[str, Any], spec: ModelRolloutSpec, roles: Mapping[str, Slot]
    ) -> bool:
        """Point each role Service (``<name>-stable``, ``<name>-canary``) at its slot's pods;
        True when anything was written. From the cache, a role already in place costs no call."""
        wrote = False
        for role in ROLES:
            wanted = build_role_service(owner, spec, role, roles[role])
            wrote = await self._ensure_service(owner, wanted) or wrote
        return wrote

    async def _ensure_service(self, owner: dict[str, Any], wanted: dict[str, Any]) -> bool:
        namespace = owner["metadata"]["namespace"]
        name = wanted["metadata"]["name"]
        if self.cache is not None:
            cached = self.cache.get(SERVICES, namespace, name)
            if cached is not None and _service_matches(cached, wanted):
                check_owned(cached, owner, "Service")
                return False

        def call() -> bool:
            try:
                current = _json(
                    self.core.read_namespaced_service(name, namespace, _preload_content=False)
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                _release(
                    self.core.create_namespaced_service(
                        namespace, cast(Any, wanted), _preload_content=False
                    )
                )
                return True
            check_owned(current, owner, "Service")
            if _service_matches(current, wanted):
                return False
            _release(
                self.core.patch_namespaced_service(
                    name,
                    namespace,
                    {
                        "spec": {
                            "selector": wanted["spec"]["selector"],
                            "ports": wanted["spec"]["ports"],
                        }
                    },
                    _preload_content=False,
                )
            )
            return True

        return await asyncio.to_thread(call)

    async def scale_slot(self, namespace: str, rollout: str, slot: Slot, replicas: int) -> bool:
        name = slot_name(rollout, slot)
        current = await self.get_deployment(namespace, name, confirm_absence=True)
        if current is None or (current.get("spec") or {}).get("replicas") == replicas:
            return False
        refs = (current.get("metadata") or {}).get("ownerReferences") or []
        if not any(r.get("kind") == "ModelRollout" and r.get("name") == rollout for r in refs):
            return False  # not ours: never touched (ensure_slot reports it)

        def call() -> None:
            _release(
                self.apps.patch_namespaced_deployment(
                    name, namespace, {"spec": {"replicas": replicas}}, _preload_content=False
                )
            )

        await asyncio.to_thread(call)
        return True

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> str | None:
        """Merge-patch the status subresource (``None`` values delete fields); the object's new
        resourceVersion."""

        def call() -> str | None:
            return _resource_version_of(
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"status": status},
                    _preload_content=False,
                    _content_type="application/merge-patch+json",
                )
            )

        return await asyncio.to_thread(call)
