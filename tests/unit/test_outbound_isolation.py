"""200 rollouts whose gate is blackholed do not stop a healthy rollout's analysis.

The real Reconciler, webhooks (app.Webhooks on one shared WebhookHTTP) and Prometheus
provider factory, against a blackholed gate and a Prometheus look-alike on 127.0.0.1; only the
cluster is a fake (tests/unit/test_reconciler.py's World). Gate calls once ran inside a
reconcile slot for their whole timeout: a few hundred blackholed gates filled all of them.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from modelrollout import webhooks
from modelrollout.api.models import Verdict
from modelrollout.app import Webhooks
from modelrollout.handlers import _slot
from modelrollout.metrics.prometheus import PrometheusProviderFactory
from modelrollout.reconciler import Reconciler
from tests import loopback
from tests.unit.route_states import serving
from tests.unit.test_reconciler import World, body, deployment, progressing_status

SLOTS = 8
ZERO_ERRORS = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {}, "value": [1700000000, "0"]}]}}  # fmt: skip


@pytest.fixture
async def prometheus() -> AsyncIterator[str]:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response(ZERO_ERRORS)

    runner, local = await loopback.serve({"/api/v1/query": answer})
    yield local.url
    await runner.cleanup()


def _rollout(namespace: str, name: str, status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    raw = body("2", status, **spec)
    raw["metadata"] = {**raw["metadata"], "namespace": namespace, "name": name, "uid": name}
    return copy.deepcopy(raw)


def waiting_for_its_gate(now: datetime, gate_url: str, namespace: str, i: int) -> dict[str, Any]:
    """Candidate ready, stage 0 not entered: its pre-rollout gate is due."""
    status = progressing_status(0, "canary", 10, now)
    status["stage"] = {
        **status["stage"],
        "readyAt": None,
        "candidateReadyAt": "2026-01-01T00:00:00Z",
    }
    status["weights"] = {"stable": 100, "candidate": 0}
    gate = {"name": "gate", "type": "pre-rollout", "url": gate_url, "timeout": "30s"}
    return _rollout(namespace, f"gated-{i}", status, webhooks=[gate])


def analysing(now: datetime, prometheus: str, namespace: str) -> dict[str, Any]:
    """In stage 0 (1m long) for 30 s with an error-rate check due."""
    status = progressing_status(0, "canary", 10, now - timedelta(seconds=30))
    analysis = {
        "interval": "10s",
        "prometheus": {"address": prometheus},
        "metrics": [{"name": "error-rate", "template": "error-rate", "max": 0.01}],
    }
    return _rollout(namespace, "healthy", status, analysis=analysis)


@pytest.mark.parametrize("namespace", ["quiet", "noisy"])  # another tenant's, or the same
async def test_blackholed_gates_of_200_rollouts_do_not_stop_a_healthy_analysis(
    prometheus: str, namespace: str
) -> None:
    world = World(
        {"healthy-a": deployment("1"), "healthy-b": deployment("2")},
        serving(10),
    )
    http = webhooks.WebhookHTTP()
    providers = PrometheusProviderFactory()
    reconciler = Reconciler(
        kube=world,  # type: ignore[arg-type]
        providers=providers,
        post_event=lambda *_: None,
        gate_caller=Webhooks(world, http).gate,  # type: ignore[arg-type]
        router_factory=world.router,
    )
    slots = asyncio.Semaphore(SLOTS)
    now = datetime.now(UTC)
    with loopback.blackhole() as gate_url:
        gated = [
            asyncio.create_task(
                reconciler.reconcile(
                    waiting_for_its_gate(now, gate_url, "noisy", i), now, _slot(slots)
                )
            )
            for i in range(200)
        ]
        try:
            await loopback.until(lambda: http.limiter.held("noisy") >= webhooks.PER_NAMESPACE)
            assert slots._value == SLOTS  # 200 ticks waiting on their gates, holding no slot
            decision = await asyncio.wait_for(
                reconciler.reconcile(analysing(now, prometheus, namespace), now, _slot(slots)),
                timeout=5,
            )
            assert decision is not None
            # the check itself; the built-in traffic-split result stands beside it
            [result] = [r for r in decision.status.analysis.results if r.name != "traffic-split"]
            assert result.verdict is Verdict.SUCCESSFUL and result.value == 0.0
            assert not any(task.done() for task in gated)
        finally:
            for task in gated:
                task.cancel()
            await asyncio.gather(*gated, return_exceptions=True)
            await http.aclose()
            await providers.aclose()
