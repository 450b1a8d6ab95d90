"""A failure while handling one rollout stays with it: others keep being reconciled; a rollout
whose latest version cannot be decoded is held; a deleted rollout's metric series go."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import kopf
from prometheus_client.parser import text_string_to_metric_families

from modelrollout import observability
from modelrollout.engine.types import Wake
from modelrollout.handlers import Memo, drive, release_routes, wake_on_change
from modelrollout.health import Limits, Liveness
from modelrollout.kube.decoding import Undecodable
from modelrollout.quarantine import REASON, Quarantine


def body(name: str, rv: str = "5") -> kopf.Body:
    meta = {"name": name, "namespace": "ns", "resourceVersion": rv, "generation": 1}
    return kopf.Body({"metadata": meta, "spec": {}, "status": {}})


class Reconciler:
    """Raises for the rollouts in ``failing``, asks the others to look again in 0.05 s."""

    def __init__(self, failing: dict[str, BaseException]) -> None:
        self.failing = failing
        self.ticks: dict[str, int] = {}

    async def reconcile(self, raw: dict[str, Any], now: datetime, slot: Any = None) -> Any:
        name = raw["metadata"]["name"]
        self.ticks[name] = self.ticks.get(name, 0) + 1
        if name in self.failing:
            raise self.failing[name]
        if slot is not None:
            async with slot:  # the tick's own part, in its reconcile slot
                pass
        return SimpleNamespace(requeue_after=timedelta(seconds=0.05), requeue_reason=Wake.ANALYSIS)

    def watches_everything(self) -> bool:
        return False


class Until:
    def __init__(self, done: asyncio.Event) -> None:
        self.done = done

    def __bool__(self) -> bool:
        return self.done.is_set()


async def run_until(memo: Memo, names: list[str], enough: Any, timeout: float = 10) -> None:
    done = asyncio.Event()

    async def watch() -> None:
        while not enough():
            await asyncio.sleep(0.01)
        done.set()
        for wake in list(memo.wakeups.values()):
            wake.set("stop")

    daemons = [
        drive(body=body(n), name=n, namespace="ns", stopped=Until(done), memo=memo)  # type: ignore[call-arg]
        for n in names
    ]
    await asyncio.wait_for(asyncio.gather(watch(), *daemons), timeout)


async def test_a_rollout_that_fails_every_reconcile_does_not_stop_the_others() -> None:
    reconciler = Reconciler({"recursive": RecursionError("too deep"), "broken": ValueError("x")})
    live = Liveness(Limits())
    memo = Memo(reconciler=reconciler, liveness=live)  # type: ignore[arg-type]
    await run_until(
        memo, ["recursive", "good", "broken"], lambda: reconciler.ticks.get("good", 0) >= 5
    )
    assert reconciler.ticks["recursive"] >= 1 and reconciler.ticks["broken"] >= 1
    assert live.healthy()  # every tick completed, the failing ones too


async def test_a_held_rollout_is_not_reconciled_until_a_newer_version_decodes() -> None:
    posted: list[tuple[str, str, str]] = []
    quarantine = Quarantine(lambda b, t, r, m: posted.append((b["metadata"]["name"], t, r)))
    lost = Undecodable("modelrollout.dev/v1alpha1", "ModelRollout", "ns", "held", "u", "9", "x")
    quarantine.report(lost)
    quarantine.report(lost)  # the same version again (a relist): one Event
    assert posted == [("held", "Warning", REASON)]
    reconciler = Reconciler({})
    memo = Memo(reconciler=reconciler, quarantine=quarantine)  # type: ignore[arg-type]
    await run_until(memo, ["held", "free"], lambda: reconciler.ticks.get("free", 0) >= 3)
    assert "held" not in reconciler.ticks
    # A version newer than the undecodable one arrives through the watch: released.
    await wake_on_change(body=body("held", rv="10"), name="held", namespace="ns", memo=memo)
    assert not quarantine.holds("ns", "held", "10")
    await run_until(memo, ["held"], lambda: reconciler.ticks.get("held", 0) >= 1)


def test_a_deleted_object_is_released_and_a_new_version_reported_again() -> None:
    posted: list[str] = []
    quarantine = Quarantine(lambda b, t, r, m: posted.append(m))
    quarantine.report(Undecodable("v1", "ModelRollout", "ns", "a", "u", "9", "deep"))
    assert quarantine.holds("ns", "a", "9") and quarantine.holds("ns", "a", "8")
    assert not quarantine.holds("ns", "a", "9", gone=True)
    quarantine.report(Undecodable("v1", "ModelRollout", "ns", "a", "u", "12", "deep"))
    assert len(posted) == 2 and "resourceVersion 12 cannot be decoded (deep)" in posted[1]


def _series(name: str) -> list[dict[str, str]]:
    text = observability.METRICS.exposition().decode()
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_a_deleted_rollouts_metric_series_are_removed() -> None:
    metrics = observability.METRICS
    metrics.stage_transition("ns", "gone", "shadow")
    metrics.rollback("ns", "gone", "AnalysisFailed: error-rate")
    metrics.stage_transition("ns", "kept", "shadow")
    memo = Memo(reconciler=SimpleNamespace())  # type: ignore[arg-type]
    await release_routes(body=body("gone"), name="gone", namespace="ns", memo=memo)  # type: ignore[call-arg]
    rollouts = {s.get("rollout") for s in _series("modelrollout_stage_transitions_total")}
    assert "gone" not in rollouts and "kept" in rollouts
    assert "gone" not in {s.get("rollout") for s in _series("modelrollout_rollbacks_total")}
