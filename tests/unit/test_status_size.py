"""The status stays small at the limits of the spec: 64 checks with the longest queries, each
failing with a provider error longer than any message kept, for many analysis runs and stage
changes. Every status patch, and the whole status, stays far below etcd's 1.5 MiB."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from modelrollout.api.models import MAX_MESSAGE_CHARS, ModelRolloutStatus, cap_text
from modelrollout.api.validation import MAX_SPEC_BYTES
from modelrollout.audit import QUERY_KEEP, verify
from modelrollout.metrics.base import ProviderError, Value
from modelrollout.reconciler import Reconciler
from tests.unit.route_states import serving
from tests.unit.test_reconciler import NOW, World, body, deployment, settled_v1

ETCD_LIMIT = int(1.5 * 1024 * 1024)
ERROR = "connection refused by the upstream; " * 150  # 5,250 characters of provider error


class Provider:
    """Every query fails with a long error, except when ``passing`` (then each gives 0)."""

    passing = False

    async def query(self, promql: str, at: Any = None) -> Any:
        return Value(0.0) if self.passing else ProviderError(ERROR)

    async def query_range(self, *args: Any) -> Any:
        raise AssertionError("no comparison checks here")

    async def is_online(self) -> bool:
        return True


class Providers:
    def __init__(self) -> None:
        self.provider = Provider()

    async def provider_for(self, spec: Any, read_secret: Any, namespace: str = "") -> Provider:
        return self.provider


def longest_checks() -> list[dict[str, Any]]:
    """64 checks with queries as long as the 256 KiB spec leaves room for (each may have 4,096
    characters, but not all 64 at once), full of variables that render longer still."""
    unit = 'sum(rate(x{service="{{ service }}"}[1m])) + '
    query = unit * (3850 // len(unit))
    query += "0" * (3850 - len(query))
    return [{"name": f"check-{i:02d}", "query": query, "max": 1} for i in range(64)]


def test_cap_text_marks_the_cut_and_is_idempotent() -> None:
    capped = cap_text("x" * 5000)
    assert len(capped) == MAX_MESSAGE_CHARS and capped.endswith("[... cut: 5000 characters in all]")
    assert cap_text(capped) == capped and cap_text("short") == "short"


async def test_the_status_stays_far_below_etcds_limit_at_the_specs_limits() -> None:
    """Version after version rolls back on 64 provider errors: each rollback's audit entry
    carries all 64 results, the most the trail can hold."""
    route = serving()
    world = World({"m-a": deployment("1")}, route)
    reconciler = Reconciler(
        kube=world,  # type: ignore[arg-type]
        providers=Providers(),  # type: ignore[arg-type]
        post_event=lambda *_: None,
        router_factory=world.router,
    )
    analysis = {"interval": "1s", "errorLimit": 1, "onInconclusive": "Rollback",
                "metrics": longest_checks()}  # fmt: skip
    spec_size = len(json.dumps(body("2", analysis=analysis)["spec"], separators=(",", ":")))
    assert 250 * 1024 < spec_size <= MAX_SPEC_BYTES  # at the limit
    status = settled_v1()
    biggest_patch, rollbacks, now = 0, 0, NOW
    for version in range(2, 12):
        world.deployments["m-b"] = deployment(str(version))
        for _ in range(20):
            now += timedelta(seconds=2)
            rollout = body(str(version), status, analysis=analysis)
            rollout["metadata"]["generation"] = version  # a new spec, as the apiserver counts
            decision = await reconciler.reconcile(rollout, now)
            assert decision is not None and not decision.status.message.startswith("invalid")
            for kind, patch in world.log:
                if kind == "status":
                    biggest_patch = max(biggest_patch, len(json.dumps(patch)))
                    status = {**status, **patch}
            world.log.clear()
            if decision.status.phase.value == "RolledBack":
                rollbacks += 1
                break
    assert rollbacks == 10
    whole = len(json.dumps(status))
    assert whole < ETCD_LIMIT / 2 and biggest_patch < ETCD_LIMIT / 2, (whole, biggest_patch)
    parsed = ModelRolloutStatus.model_validate({k: v for k, v in status.items() if v is not None})
    assert verify(parsed.history) == []
    # the 64 checks and the built-in traffic-split
    assert sum(len(e.metrics) == 65 for e in parsed.history) >= 2
    texts = [parsed.message, parsed.rollback_reason or "", *(c.message for c in parsed.conditions)]
    texts += [r.message or "" for r in parsed.analysis.results]
    texts += [e.reason for e in parsed.history]
    texts += [m.message or "" for e in parsed.history for m in e.metrics]
    assert max(map(len, texts)) <= MAX_MESSAGE_CHARS
    assert any(t.endswith("characters in all]") for t in texts)  # cut, and marked so
    queries = [m.query or "" for e in parsed.history for m in e.metrics]
    assert queries and max(map(len, queries)) <= QUERY_KEEP
