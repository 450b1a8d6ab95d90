"""FairLimiter: a key's share is bounded, waiting keys take turns, give-ups free their place."""

from __future__ import annotations

import asyncio

import pytest

from modelrollout.outbound import FairLimiter


async def _hold(limiter: FairLimiter, key: str, release: asyncio.Event, log: list[str]) -> None:
    async with limiter.slot(key):
        log.append(key)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_key_holds_at_most_its_share_and_another_key_gets_in_at_once() -> None:
    limiter = FairLimiter(capacity=4, per_key=2)
    release, log = asyncio.Event(), []
    noisy = [asyncio.create_task(_hold(limiter, "a", release, log)) for _ in range(10)]
    await _settle()
    assert limiter.held("a") == 2 and limiter.waiting("a") == 8
    quiet = asyncio.create_task(_hold(limiter, "b", release, log))
    await _settle()
    assert log == ["a", "a", "b"]  # b did not queue behind a's eight
    release.set()
    await asyncio.gather(*noisy, quiet)
    assert limiter.held() == 0


async def test_waiting_keys_take_turns_when_places_free_up() -> None:
    limiter = FairLimiter(capacity=1, per_key=1)
    gates = {key: asyncio.Event() for key in "xabc"}
    log: list[str] = []
    first = asyncio.create_task(_hold(limiter, "x", gates["x"], log))
    await _settle()
    tasks = [asyncio.create_task(_hold(limiter, k, asyncio.Event(), log)) for k in "aaab"]
    await _settle()
    gates["x"].set()
    await first
    await _settle()
    assert log == ["x", "a"]
    tasks[0].cancel()  # a's holder gives up its place: b's turn before a's second
    await _settle()
    assert log == ["x", "a", "b"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.held() == 0 and limiter.waiting("a") == 0


async def test_a_waiter_that_gives_up_leaves_no_trace() -> None:
    limiter = FairLimiter(capacity=1, per_key=1)
    release, log = asyncio.Event(), []
    holder = asyncio.create_task(_hold(limiter, "a", release, log))
    await _settle()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _hold(limiter, "b", release, log)
    assert limiter.waiting("b") == 0
    release.set()
    await holder
    async with asyncio.timeout(1):
        await _hold(limiter, "b", release, log)  # the place went back, not to the ghost
    assert log == ["a", "b"] and limiter.held() == 0


def test_the_share_must_fit_in_the_capacity() -> None:
    with pytest.raises(ValueError, match="need 1 <= per_key <= capacity"):
        FairLimiter(capacity=2, per_key=3)
