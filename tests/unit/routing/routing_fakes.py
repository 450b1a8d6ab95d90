"""Fakes for the routers' I/O part: an in-memory CustomObjectsApi that applies JSON patches the way
the API server does (a failed ``test`` op is a 422, a write bumps resourceVersion), and an
in-memory store for the replica router's Deployments and Service."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonpatch
import yaml
from kubernetes.client.exceptions import ApiException

FIXTURES = Path(__file__).parent / "fixtures"

Body = dict[str, Any]


def load_fixture(name: str) -> Body:
    data: Body = yaml.safe_load((FIXTURES / name).read_text())
    return data


def _status(code: int, reason: str, message: str) -> str:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    )


# What a Kubernetes API server (recorded from the lab's 1.20) answers when a JSON patch does not
# apply, e.g. when its resourceVersion `test` op fails.
PATCH_FAILED = (
    '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
    '"message":"the server rejected our request due to an error in our request",'
    '"reason":"Invalid","details":{},"code":422}'
)

# A schema violation: also 422, but with field causes.
SCHEMA_INVALID = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'HTTPRoute.gateway.networking.k8s.io "fraud-detector" is invalid: '
        "spec.rules.backendRefs.weight: Invalid value: 1000001",
        "reason": "Invalid",
        "details": {
            "name": "fraud-detector",
            "group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 1000001",
                    "field": "spec.rules.backendRefs.weight",
                }
            ],
        },
        "code": 422,
    }
)


class FakeCustomObjects:
    """The two CustomObjectsApi calls the routers make, over a dict of objects."""

    def __init__(self, *objects: Body) -> None:
        self.objects: dict[tuple[str, str, str, str], Body] = {}
        for body in objects:
            self.put(body)
        self.gets = 0
        self.unserved = False  # answer reads like an apiserver without the CRD
        self.patches: list[list[dict[str, Any]]] = []
        # Called with the stored object before a patch is applied: simulates a concurrent writer.
        self.before_patch: list[Callable[[Body], None]] = []
        self.fail_with: list[ApiException] = []  # raised (one per patch call) before applying

    @staticmethod
    def _key(group: str, plural: str, namespace: str, name: str) -> tuple[str, str, str, str]:
        return group, plural, namespace, name

    def put(self, body: Body) -> None:
        group = body["apiVersion"].split("/")[0]
        plural = {"HTTPRoute": "httproutes", "VirtualService": "virtualservices"}[body["kind"]]
        meta = body["metadata"]
        self.objects[self._key(group, plural, meta["namespace"], meta["name"])] = copy.deepcopy(
            body
        )

    def stored(self, group: str, plural: str, namespace: str, name: str) -> Body:
        return self.objects[self._key(group, plural, namespace, name)]

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Body:
        self.gets += 1
        if self.unserved:
            raise ApiException(status=404, reason="Not Found", body="404 page not found\n")
        key = self._key(group, plural, namespace, name)
        if key not in self.objects:
            raise ApiException(
                status=404,
                reason="Not Found",
                body=_status(404, "NotFound", f'{plural}.{group} "{name}" not found'),
            )
        return copy.deepcopy(self.objects[key])

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: list[dict[str, Any]],
        _content_type: str | None = None,
    ) -> Body:
        assert _content_type == "application/json-patch+json", "routers must send a JSON patch"
        assert isinstance(body, list)
        self.patches.append(copy.deepcopy(body))
        key = self._key(group, plural, namespace, name)
        if key not in self.objects:
            raise ApiException(
                status=404, reason="Not Found", body=_status(404, "NotFound", "not found")
            )
        if self.fail_with:
            raise self.fail_with.pop(0)
        for hook in self.before_patch:
            hook(self.objects[key])
        self.before_patch.clear()
        try:
            patched = jsonpatch.apply_patch(self.objects[key], body)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise ApiException(
                status=422, reason="Unprocessable Entity", body=PATCH_FAILED
            ) from exc
        patched["metadata"]["resourceVersion"] = str(
            int(patched["metadata"]["resourceVersion"]) + 1
        )
        self.objects[key] = patched
        return copy.deepcopy(patched)


def bump(body: Body) -> None:
    """What any other write does to the stored object."""
    body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)


class FakeWorkloads:
    """The replica router's WorkloadAPI over dicts; records every write in order."""

    def __init__(self, namespace: str = "ml", owner_uid: str | None = None) -> None:
        self.namespace = namespace
        self.owner_uid = owner_uid  # the uid the Deployments it adds are owned by
        self.deployments: dict[str, Body] = {}
        self.services: dict[str, Body] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.create_conflict = False  # simulate a concurrent creation of the Service

    def add_deployment(self, name: str, replicas: int, ready: int | None = None) -> None:
        owners = [{"kind": "ModelRollout", "uid": self.owner_uid}] if self.owner_uid else []
        self.deployments[name] = {
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "generation": 1,
                "ownerReferences": owners,
            },
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": replicas if ready is None else ready},
        }

    async def get_deployment(self, name: str) -> Body | None:
        return copy.deepcopy(self.deployments.get(name))

    async def scale_deployment(self, name: str, replicas: int) -> None:
        self.writes.append(("scale", name, replicas))
        self.deployments[name]["spec"]["replicas"] = replicas

    async def get_service(self, name: str) -> Body | None:
        return copy.deepcopy(self.services.get(name))

    async def create_service(self, body: Body) -> None:
        self.writes.append(("create", body["metadata"]["name"], copy.deepcopy(body)))
        name = body["metadata"]["name"]
        if self.create_conflict:
            self.create_conflict = False
            other = copy.deepcopy(body)
            other["metadata"]["annotations"] = {}
            self.services[name] = other
            raise ApiException(
                status=409, reason="Conflict", body=_status(409, "AlreadyExists", "exists")
            )
        if name in self.services:
            raise ApiException(
                status=409, reason="Conflict", body=_status(409, "AlreadyExists", "exists")
            )
        self.services[name] = copy.deepcopy(body)

    async def patch_service(self, name: str, patch: Body) -> None:
        self.writes.append(("patch", name, copy.deepcopy(patch)))

        # JSON merge patch (RFC 7386): None deletes a key.
        def merge(target: Body, change: Body) -> None:
            for key, value in change.items():
                if value is None:
                    target.pop(key, None)
                elif isinstance(value, dict) and isinstance(target.get(key), dict):
                    merge(target[key], value)
                else:
                    target[key] = copy.deepcopy(value)

        merge(self.services[name], patch)


def percents(state: Any) -> dict[str, int]:
    """A read-back RouteState as percent per Service (zero shares left out); every share must
    name the slot its Service is."""
    for share in state.shares:
        assert share.slot == (share.service[-1] if share.service[-2:] in ("-a", "-b") else None)
    return {s.service: s.percent for s in state.shares if s.percent}


def split(desired: Any, stable: int, candidate: int) -> dict[str, int]:
    """What ``percents`` reads back when ``desired``'s Services get these shares."""
    wanted = {desired.stable_service: stable}
    if desired.candidate_service is not None:
        wanted[desired.candidate_service] = candidate
    return {service: percent for service, percent in wanted.items() if percent}
