"""The rollout daemon looks again when the engine asked, counted from the tick's start."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import kopf

from modelrollout.handlers import Memo, drive

BODY = kopf.Body({"metadata": {"name": "m", "namespace": "ns"}, "spec": {}, "status": {}})


class SlowReconciler:
    """Each reconcile takes ``seconds`` (a slow apiserver) and asks to look again in 0.5 s."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.starts: list[float] = []

    async def reconcile(self, body: dict[str, Any], now: datetime) -> Any:
        self.starts.append(time.monotonic())
        await asyncio.sleep(self.seconds)  # the time the reconcile's API calls take
        return SimpleNamespace(requeue_after=timedelta(seconds=0.5))


class StopAfter:
    def __init__(self, reconciler: SlowReconciler, ticks: int) -> None:
        self.reconciler, self.ticks = reconciler, ticks

    def __bool__(self) -> bool:
        return len(self.reconciler.starts) >= self.ticks


async def test_a_slow_reconcile_does_not_push_the_next_tick_back() -> None:
    reconciler = SlowReconciler(0.3)
    memo = Memo(reconciler=reconciler)  # type: ignore[arg-type]
    await drive(body=BODY, name="m", namespace="ns", stopped=StopAfter(reconciler, 3), memo=memo)  # type: ignore[call-arg]
    gaps = [b - a for a, b in zip(reconciler.starts, reconciler.starts[1:], strict=False)]
    # 0.5 s from one tick's start to the next, not 0.3 s of work plus 0.5 s of sleep.
    assert len(gaps) == 2 and all(0.45 <= gap < 0.75 for gap in gaps), gaps


async def test_a_reconcile_slower_than_the_requeue_is_followed_after_a_short_pause() -> None:
    reconciler = SlowReconciler(0.6)
    memo = Memo(reconciler=reconciler)  # type: ignore[arg-type]
    await drive(body=BODY, name="m", namespace="ns", stopped=StopAfter(reconciler, 2), memo=memo)  # type: ignore[call-arg]
    [gap] = [b - a for a, b in zip(reconciler.starts, reconciler.starts[1:], strict=False)]
    assert 0.7 <= gap < 1.0, gap  # 0.6 s of work, then the 0.1 s floor: never a busy loop
