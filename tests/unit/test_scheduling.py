"""The order in which a saturated operator lets ticks reconcile."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from modelrollout.engine.types import Wake
from modelrollout.scheduling import ReconcileSlots, Trigger


async def queue_up(
    slots: ReconcileSlots, triggers: list[str], order: list[str]
) -> list[asyncio.Task[None]]:
    async def tick(trigger: str, index: int) -> None:
        async with slots.slot(trigger):
            order.append(f"{trigger}#{index}")
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(tick(t, i)) for i, t in enumerate(triggers)]
    while slots.waiting < len(triggers):  # every tick queued behind the held slot
        await asyncio.sleep(0)
    return tasks


async def test_scheduled_ticks_go_before_reactions_each_in_arrival_order() -> None:
    # An analysis due on a candidate that serves errors must not wait behind reactions to
    # Deployment status updates when the operator is behind.
    slots = ReconcileSlots(1)
    order: list[str] = []
    await slots.acquire(scheduled=False)  # the one slot is busy
    triggers = [Trigger.WORKLOAD, Wake.ANALYSIS, Trigger.CHANGE, Wake.STAGE_END, Wake.READINESS]
    tasks = await queue_up(slots, triggers, order)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["analysis#1", "stage-end#3", "workload#0", "change#2", "readiness#4"]
    assert slots.in_use == 0 and slots.waiting == 0


async def test_a_reaction_that_waited_max_defer_goes_first_so_none_starves() -> None:
    slots = ReconcileSlots(1, max_defer=timedelta(0))
    order: list[str] = []
    await slots.acquire(scheduled=False)
    tasks = await queue_up(slots, [Trigger.WORKLOAD, Wake.ANALYSIS], order)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["workload#0", "analysis#1"]


async def test_never_more_holders_than_slots_and_a_free_slot_is_taken_at_once() -> None:
    slots = ReconcileSlots(2)
    held, peak = 0, 0

    async def tick(trigger: str) -> None:
        nonlocal held, peak
        async with slots.slot(trigger):
            held += 1
            peak = max(peak, held)
            await asyncio.sleep(0.001)
            held -= 1

    await asyncio.gather(*(tick(Wake.ANALYSIS if i % 3 else Trigger.WORKLOAD) for i in range(20)))
    assert peak == 2 and slots.in_use == 0
    await asyncio.wait_for(slots.acquire(scheduled=False), timeout=1)  # nothing in the way
    assert slots.in_use == 1


async def test_a_waiter_cancelled_in_the_queue_or_after_being_handed_a_slot_loses_no_slot() -> None:
    slots = ReconcileSlots(1)
    await slots.acquire(scheduled=True)
    queued = asyncio.create_task(slots.acquire(scheduled=True))
    handed = asyncio.create_task(slots.acquire(scheduled=False))
    await asyncio.sleep(0)
    queued.cancel()  # gives up while waiting
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert slots.waiting == 1
    slots.release()  # the slot goes to `handed`...
    handed.cancel()  # ...which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots.in_use == 0 and slots.waiting == 0
    await asyncio.wait_for(slots.acquire(scheduled=False), timeout=1)


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one reconcile slot"):
        ReconcileSlots(0)
