"""README: "A ModelRollout carries a finalizer"; docs/rbac.md: "routes are restored before a
rollout goes away". kopf puts its finalizer on every rollout because a delete handler needs
one, and that handler leaves the route 100% on the stable slot before the object goes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kubernetes import client as k8s

from modelrollout import handlers
from modelrollout.app import build_memo
from modelrollout.handlers import Memo

SPEC: dict[str, Any] = {
    "model": {"name": "fraud", "version": "2.0.0", "uri": "s3://models/fraud/2.0.0"},
    "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}},
    "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
}


class FakeRouter:
    def __init__(self) -> None:
        self.finalized: list[str] = []

    async def finalize(self, stable_service: str) -> None:
        self.finalized.append(stable_service)


def test_the_delete_handler_needs_a_finalizer() -> None:
    registry = kopf.get_default_registry()
    [handler] = [
        h for h in registry._changing.get_all_handlers() if h.fn is handlers.release_routes
    ]
    assert handler.reason == "delete"
    assert handler.requires_finalizer is True


def delete(monkeypatch: pytest.MonkeyPatch, status: dict[str, Any]) -> list[tuple[str, Any]]:
    router = FakeRouter()
    made: list[tuple[str, Any]] = []

    def make_router(api: Any, namespace: str, name: str, spec: Any, owner: Any) -> FakeRouter:
        made.append((namespace, name))
        return router

    monkeypatch.setattr(handlers, "make_router", make_router)
    memo: Memo = build_memo(k8s.ApiClient(), prometheus_url=None)
    body = kopf.Body(
        {"metadata": {"namespace": "ml", "name": "fraud"}, "spec": SPEC, "status": status}
    )
    asyncio.run(handlers.release_routes(body=body, name="fraud", namespace="ml", memo=memo))
    return [*made, *(("finalized", s) for s in router.finalized)]


def test_deleting_a_rollout_leaves_its_route_on_the_stable_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = {"phase": "Progressing", "stableSlot": "b", "stableVersion": "1.0.0"}
    assert delete(monkeypatch, status) == [("ml", "fraud"), ("finalized", "fraud-b")]


def test_a_rollout_that_never_served_leaves_the_route_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert delete(monkeypatch, {}) == []
