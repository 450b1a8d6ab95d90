"""When each rollout's daemon looks again, and in which order when the operator is behind.

- :class:`Wakeup`: a sleeping daemon's alarm clock (the engine's requeue time, or an event:
  a spec change, a Deployment or route change, its own status write coming back);
- :class:`Trigger`: why a tick runs (the ``trigger`` label of ``modelrollout_reconciles_total``);
- :class:`ReconcileSlots`: at most N reconciles in flight; when all are taken, the ticks that
  keep the schedule (an analysis or a stage's end that is due) go first, the ticks that react to
  a change after them, each kind in arrival order, and none waits behind the others for more
  than ``max_defer``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from enum import StrEnum

from modelrollout.engine.types import Wake


class Trigger(StrEnum):
    """Why a daemon looks again, besides the time the engine asked for, which counts under what
    it waits for (a :class:`~modelrollout.engine.types.Wake`: analysis, stage-end, readiness,
    converge, ...)."""

    START = "start"  # the daemon started: the operator started or the rollout appeared
    CHANGE = "change"  # a new spec generation or a manual command
    WORKLOAD = "workload"  # one of its Deployments changed what the engine sees of it
    ROUTE = "route"  # someone else changed its route
    CAUGHT_UP = "caught-up"  # its own last status write came back through the watch
    RETRY = "retry"  # after an error, or a deferred tick whose write did not come back in time
    RESYNC = "resync"  # settled, nothing due: a periodic look (drift of the route or slots)


SCHEDULED: frozenset[str] = frozenset({Wake.ANALYSIS, Wake.STAGE_END, Wake.GATE, Wake.DEADLINE})
"""Ticks that keep a rollout's schedule: an analysis run that may roll back a bad candidate,
a stage that is over. They go before the others when the operator is behind."""


class Wakeup:
    """A sleeping daemon's alarm clock: anyone with a reason for it to look now sets it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None
        # The resourceVersion a deferred tick waits for (its own last status write), or None.
        self.awaited_version: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = None

    async def sleep(self, delay: timedelta, otherwise: str) -> str:
        """Sleep ``delay`` unless set first; the reason to look again. A timer that sets the
        alarm itself, not ``asyncio.wait_for``: that (Python 3.11) wraps the wait in a task of
        its own and cancels it on every timeout, per sleeping rollout."""
        timer = asyncio.get_running_loop().call_later(
            max(delay.total_seconds(), 0.0), self.set, otherwise
        )
        try:
            await self._event.wait()
        finally:
            timer.cancel()
        return self.reason or otherwise


class ReconcileSlots:
    """At most ``size`` holders at once (a semaphore), scheduled ticks first.

    Without an order of its own a saturated operator served ticks first come, first served: an
    analysis run due on a candidate that serves errors waited behind hundreds of reactions to pod
    status updates (breach to rollback p99 several times its median at 1,000 rollouts,
    docs/performance.md). A tick that is not scheduled is still let in once it has waited
    ``max_defer``, so none starves.
    """

    def __init__(self, size: int, max_defer: timedelta = timedelta(seconds=10)) -> None:
        if size < 1:
            raise ValueError(f"at least one reconcile slot is needed, not {size}")
        self.size = size
        self._free = size
        self._max_defer = max_defer.total_seconds()
        self._scheduled: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._others: deque[tuple[float, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> int:
        return len(self._scheduled) + len(self._others)

    @asynccontextmanager
    async def slot(self, trigger: str) -> AsyncIterator[None]:
        await self.acquire(trigger in SCHEDULED)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, scheduled: bool) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (time.monotonic(), waiter)
        queue = self._scheduled if scheduled else self._others
        queue.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but cancelled before taking it: pass it on
            else:
                queue.remove(entry)
            raise

    def release(self) -> None:
        self._free += 1
        while self._free > 0:
            entry = self._next()
            if entry is None:
                return
            waiter = entry[1]
            if waiter.done():  # cancelled while queued (it removes itself, but be sure)
                continue
            self._free -= 1
            waiter.set_result(None)

    def _next(self) -> tuple[float, asyncio.Future[None]] | None:
        if self._others and (
            not self._scheduled or time.monotonic() - self._others[0][0] >= self._max_defer
        ):
            return self._others.popleft()
        if self._scheduled:
            return self._scheduled.popleft()
        return None
