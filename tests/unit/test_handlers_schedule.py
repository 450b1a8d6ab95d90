"""The rollout daemon looks again when the engine asked, counted from the tick's start."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from modelrollout import handlers
from modelrollout.engine.types import Wake
from modelrollout.handlers import (
    CATCH_UP_WAIT,
    RESYNC,
    SETTLED_RESYNC,
    Memo,
    Next,
    Trigger,
    Wakeup,
    _reconcile_once,
    drive,
    wake_on_change,
)
from modelrollout.observability import METRICS
from modelrollout.reconciler import StaleStatus

BODY = kopf.Body({"metadata": {"name": "m", "namespace": "ns"}, "spec": {}, "status": {}})


class SlowReconciler:
    """Each reconcile takes ``seconds`` (a slow apiserver) and asks to look again in 0.5 s."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.starts: list[float] = []

    async def reconcile(self, body: dict[str, Any], now: datetime, slot: Any = None) -> Any:
        async with slot or contextlib.nullcontext():
            self.starts.append(time.monotonic())
            await asyncio.sleep(self.seconds)  # the time the reconcile's API calls take
        return SimpleNamespace(requeue_after=timedelta(seconds=0.5), requeue_reason=Wake.ANALYSIS)


class StopAfter:
    def __init__(self, reconciler: SlowReconciler, ticks: int) -> None:
        self.reconciler, self.ticks = reconciler, ticks

    def __bool__(self) -> bool:
        return len(self.reconciler.starts) >= self.ticks


async def test_a_slow_reconcile_does_not_push_the_next_tick_back() -> None:
    reconciler = SlowReconciler(0.3)
    memo = Memo(reconciler=reconciler)  # type: ignore[arg-type]
    started = count(METRICS.reconciles, Trigger.START)
    for_analysis = count(METRICS.reconciles, Wake.ANALYSIS)
    await drive(body=BODY, name="m", namespace="ns", stopped=StopAfter(reconciler, 3), memo=memo)  # type: ignore[call-arg]
    # counted by why they ran: the first as the daemon's start, the others as what the engine
    # asked to look again for
    assert count(METRICS.reconciles, Trigger.START) == started + 1
    assert count(METRICS.reconciles, Wake.ANALYSIS) == for_analysis + 2
    gaps = [b - a for a, b in zip(reconciler.starts, reconciler.starts[1:], strict=False)]
    # 0.5 s from one tick's start to the next, not 0.3 s of work plus 0.5 s of sleep.
    assert len(gaps) == 2 and all(0.45 <= gap < 0.75 for gap in gaps), gaps


async def test_a_reconcile_slower_than_the_requeue_is_followed_after_a_short_pause() -> None:
    reconciler = SlowReconciler(0.6)
    memo = Memo(reconciler=reconciler)  # type: ignore[arg-type]
    await drive(body=BODY, name="m", namespace="ns", stopped=StopAfter(reconciler, 2), memo=memo)  # type: ignore[call-arg]
    [gap] = [b - a for a, b in zip(reconciler.starts, reconciler.starts[1:], strict=False)]
    assert 0.7 <= gap < 1.0, gap  # 0.6 s of work, then the 0.1 s floor: never a busy loop


class Decision:
    """Stands for the engine's Decision (a parsed status with its audit trail)."""

    requeue_after = timedelta(seconds=30)
    requeue_reason = Wake.STAGE_END


async def test_the_daemon_sleeps_without_holding_the_last_decision() -> None:
    # 1,000 sleeping daemons each holding their last Decision were ~30 MiB of the operator's
    # memory (docs/performance.md): between ticks, nothing of the reconcile may stay alive.
    made: list[weakref.ref[Decision]] = []
    asleep = asyncio.Event()

    class Reconciler:
        async def reconcile(self, body: dict[str, Any], now: datetime, slot: Any) -> Decision:
            decision = Decision()
            made.append(weakref.ref(decision))
            asyncio.get_running_loop().call_soon(asleep.set)
            return decision

    memo = Memo(reconciler=Reconciler())  # type: ignore[arg-type]
    daemon = asyncio.create_task(
        drive(body=BODY, name="m", namespace="ns", stopped=False, memo=memo)  # type: ignore[call-arg, arg-type]
    )
    try:
        await asyncio.wait_for(asleep.wait(), timeout=5)
        await asyncio.sleep(0)  # the daemon reaches its sleep
        gc.collect()
        assert len(made) == 1 and made[0]() is None
        assert not daemon.done()
        # ... nor a task of its own for the sleep (asyncio.wait_for made one per sleeping rollout)
        assert asyncio.all_tasks() == {asyncio.current_task(), daemon}
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon


async def test_no_more_reconciles_in_flight_than_the_memo_allows() -> None:
    # 1,000 stages ending at once must not mean 1,000 parsed statuses in memory at once.
    in_flight, peak, done = 0, 0, 0

    class Reconciler:
        async def reconcile(self, body: dict[str, Any], now: datetime, slot: Any) -> Any:
            nonlocal in_flight, peak, done
            async with slot:
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.01)  # the reconcile's API calls
                in_flight -= 1
            done += 1
            return SimpleNamespace(
                requeue_after=timedelta(seconds=30), requeue_reason=Wake.ANALYSIS
            )

    memo = Memo(reconciler=Reconciler(), reconcile_slots=asyncio.Semaphore(3))  # type: ignore[arg-type]

    class Once:
        def __init__(self) -> None:
            self.asked = 0

        def __bool__(self) -> bool:  # stopped after the first reconcile
            self.asked += 1
            return self.asked > 1

    daemons = [
        drive(body=BODY, name=f"m{i}", namespace="ns", stopped=Once(), memo=memo)  # type: ignore[call-arg, arg-type]
        for i in range(10)
    ]
    tasks = [asyncio.create_task(d) for d in daemons]

    async def all_reconciled() -> None:
        while done < 10:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(all_reconciled(), timeout=10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert peak == 3


class StaleOnce:
    """The first tick finds the body older than the operator's own write "20"; later ones
    decide and ask to look again in 30 s. Records each tick's resourceVersion and whether a
    reconcile slot was free while the daemon waited."""

    def __init__(self) -> None:
        self.ticks: list[str] = []
        self.ticked = asyncio.Event()

    async def reconcile(self, body: dict[str, Any], now: datetime, slot: Any) -> Any:
        self.ticks.append(body["metadata"]["resourceVersion"])
        self.ticked.set()
        if len(self.ticks) == 1:
            raise StaleStatus("ns", "m", body["metadata"]["resourceVersion"], "20")
        return SimpleNamespace(requeue_after=timedelta(seconds=30), requeue_reason=Wake.ANALYSIS)

    def changed_by_others(self, body: Any) -> bool:
        return False


def count(metric: Any, *labels: str) -> float:
    return float((metric.labels(*labels) if labels else metric)._value.get())


async def test_a_tick_on_a_body_older_than_our_write_waits_for_the_watch_outside_its_slot() -> None:
    # Under load the watch delivers the operator's own status write late. The tick refused on
    # the old body used to retry every 200 ms, each time back in the queue for a slot; now it
    # waits, holding no slot, for the watch event that brings the write, and goes on at once.
    body = kopf.Body({"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "19"}})
    reconciler = StaleOnce()
    memo = Memo(reconciler=reconciler, reconcile_slots=asyncio.Semaphore(1))  # type: ignore[arg-type]
    memo.seen[("ns", "m")] = (None, None)  # its spec's generation and command: seen before
    deferred = count(METRICS.reconciles_deferred)
    caught_up = count(METRICS.reconciles, Trigger.CAUGHT_UP)
    daemon = asyncio.create_task(
        drive(body=body, name="m", namespace="ns", stopped=False, memo=memo)  # type: ignore[call-arg, arg-type]
    )
    try:
        await asyncio.wait_for(reconciler.ticked.wait(), timeout=5)
        reconciler.ticked.clear()
        while memo.wakeups[("ns", "m")].awaited_version is None:
            await asyncio.sleep(0.001)
        assert memo.reconcile_slots._value == 1  # waiting, but not in a slot
        assert count(METRICS.reconciles_deferred) == deferred + 1
        # A status write of someone else (older than ours) arrives: still waiting.
        body._replace_with({"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "19"}})
        await wake_on_change(body=body, name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
        await asyncio.sleep(0.05)
        assert reconciler.ticks == ["19"]
        # Ours arrives: the next tick runs on it, long before the 2 s fallback.
        started = time.monotonic()
        body._replace_with({"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "20"}})
        await wake_on_change(body=body, name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
        await asyncio.wait_for(reconciler.ticked.wait(), timeout=CATCH_UP_WAIT.total_seconds())
        assert time.monotonic() - started < CATCH_UP_WAIT.total_seconds()
        assert reconciler.ticks == ["19", "20"]
        assert count(METRICS.reconciles, Trigger.CAUGHT_UP) == caught_up + 1
        assert memo.wakeups[("ns", "m")].awaited_version is None
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon


async def test_a_write_that_never_comes_back_is_looked_for_again_after_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "CATCH_UP_WAIT", timedelta(milliseconds=50))
    body = kopf.Body({"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "19"}})
    reconciler = StaleOnce()
    memo = Memo(reconciler=reconciler)  # type: ignore[arg-type]
    retries = count(METRICS.reconciles, Trigger.RETRY)
    daemon = asyncio.create_task(
        drive(body=body, name="m", namespace="ns", stopped=False, memo=memo)  # type: ignore[call-arg, arg-type]
    )
    try:
        while len(reconciler.ticks) < 2:
            await asyncio.wait_for(reconciler.ticked.wait(), timeout=5)
            reconciler.ticked.clear()
        assert reconciler.ticks == ["19", "19"]
        assert count(METRICS.reconciles, Trigger.RETRY) == retries + 1
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon


async def test_a_spec_change_wakes_the_daemon_and_a_status_write_does_not() -> None:
    memo = Memo()
    wake = memo.wakeups[("ns", "m")] = Wakeup()
    raw: dict[str, Any] = {"metadata": {"name": "m", "namespace": "ns", "generation": 1}}
    await wake_on_change(body=kopf.Body(raw), name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
    assert wake.reason is Trigger.CHANGE
    wake.clear()
    raw["metadata"]["resourceVersion"] = "30"  # a status write: same generation, same command
    await wake_on_change(body=kopf.Body(raw), name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
    assert wake.reason is None
    raw["metadata"]["generation"] = 2
    await wake_on_change(body=kopf.Body(raw), name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
    assert wake.reason is Trigger.CHANGE


class Settled:
    """A reconciler whose rollout is settled (nothing due), with or without live watches."""

    def __init__(self, watched: bool) -> None:
        self.watched = watched

    async def reconcile(self, body: dict[str, Any], now: datetime, slot: Any) -> Any:
        return SimpleNamespace(requeue_after=None, requeue_reason=None)

    def watches_everything(self) -> bool:
        return self.watched


@pytest.mark.parametrize(("watched", "rest"), [(True, SETTLED_RESYNC), (False, RESYNC)])
async def test_a_settled_rollout_rests_longer_while_its_watches_would_wake_it(
    watched: bool, rest: timedelta
) -> None:
    # At 1,000 settled rollouts a look every 30 s was 33 reconciles a second finding nothing.
    after = await _reconcile_once(Settled(watched), BODY, "ns", "m")  # type: ignore[arg-type]
    assert after == Next(rest, Trigger.RESYNC)


class EditedElsewhere:
    def __init__(self, edited: bool) -> None:
        self.edited = edited

    def changed_by_others(self, body: Any) -> bool:
        return self.edited


@pytest.mark.parametrize("edited", [True, False])
async def test_a_status_someone_else_wrote_wakes_the_daemon_and_our_own_does_not(
    edited: bool,
) -> None:
    # A settled rollout looks again only every few minutes: a wiped or edited status must
    # wake it, its own status writes (the same generation, no command) must not.
    memo = Memo(reconciler=EditedElsewhere(edited))  # type: ignore[arg-type]
    wake = memo.wakeups[("ns", "m")] = Wakeup()
    raw: dict[str, Any] = {"metadata": {"name": "m", "namespace": "ns", "generation": 1}}
    memo.seen[("ns", "m")] = (1, None)
    await wake_on_change(body=kopf.Body(raw), name="m", namespace="ns", memo=memo)  # type: ignore[call-arg]
    assert wake.reason == (Trigger.CHANGE if edited else None)
