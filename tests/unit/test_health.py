"""/healthz tells the truth: a blocked event loop, a watch that stays down, or work due with
no reconcile completing make it fail, and an operator unhealthy for long enough exits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web

from modelrollout.health import EXIT_UNHEALTHY, Limits, Liveness, Watchdog
from modelrollout.observability import OperatorMetrics, start_metrics_server

LIMITS = Limits(loop_stall_s=10, watch_down_s=60, reconcile_stall_s=120, exit_after_s=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_loop_that_stops_beating_is_reported(clock: Clock) -> None:
    live = Liveness(LIMITS, clock)
    clock.now += 9
    assert live.problems() == []
    clock.now += 2
    assert live.problems() == ["event loop blocked for 11s"]
    live.beat()
    assert live.healthy()


def test_a_watch_down_longer_than_its_limit_is_reported_until_it_reconnects(clock: Clock) -> None:
    live = Liveness(LIMITS, clock)
    live.watch_failed("/apis/modelrollout.dev/v1alpha1/namespaces/a/modelrollouts")
    clock.now += 30
    live.watch_failed("/apis/modelrollout.dev/v1alpha1/namespaces/a/modelrollouts")  # retries
    live.beat()
    assert live.healthy()
    clock.now += 31
    live.beat()
    [problem] = live.problems()
    assert (
        problem.startswith("watch /apis/modelrollout.dev/v1alpha1/namespaces/a/")
        and "61s" in problem
    )
    live.watch_connected("/apis/modelrollout.dev/v1alpha1/namespaces/a/modelrollouts")
    assert live.healthy()


def test_work_due_with_no_reconcile_completing_is_reported(clock: Clock) -> None:
    live = Liveness(LIMITS, clock)
    live.due(("a", "stuck"))
    clock.now += 100
    live.due(("b", "slow"))
    live.done(("b", "slow"))  # others complete: one slow rollout is not the operator's failure
    clock.now += 100
    live.beat()
    assert live.healthy()
    clock.now += 121
    live.beat()
    [problem] = live.problems()
    assert "no reconcile completed for 221s" in problem and "('a', 'stuck')" in problem
    live.forget(("a", "stuck"))  # its daemon ended
    assert live.healthy()


@pytest.fixture
async def apiserver() -> AsyncIterator[str]:
    async def watch(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "200"))
        return web.Response(status=status, text="{}\n", content_type="application/json")

    app = web.Application()
    app.router.add_get("/watch/{name}", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_watch_requests_record_whether_they_connected(apiserver: str, clock: Clock) -> None:
    live = Liveness(LIMITS, clock)
    async with aiohttp.ClientSession(middlewares=(live.track_watches(),)) as session:
        async with session.get(f"{apiserver}/watch/a?watch=true&status=503"):
            pass
        async with session.get(f"{apiserver}/watch/b?watch=true"):
            pass
        async with session.get(f"{apiserver}/watch/c?status=500"):
            pass  # not a watch: not judged here
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get("http://127.0.0.1:1/watch/d?watch=true"):
                pass
    clock.now += 61
    live.beat()
    assert sorted(p.split()[1] for p in live.problems()) == ["/watch/a", "/watch/d"]


async def test_the_heartbeat_runs_on_the_loop() -> None:
    clock = Clock()
    live = Liveness(LIMITS, clock)
    clock.now += 11
    task = asyncio.ensure_future(live.heartbeat())
    await asyncio.sleep(0)
    task.cancel()
    assert live.healthy()


def test_healthz_answers_503_with_the_problems(clock: Clock) -> None:
    live = Liveness(LIMITS, clock)
    server = start_metrics_server(0, "127.0.0.1", metrics=OperatorMetrics(), problems=live.problems)
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert httpx.get(url).status_code == 200
        clock.now += 11
        answer = httpx.get(url)
        assert answer.status_code == 503 and answer.text == "event loop blocked for 11s\n"
    finally:
        server.close()


def test_the_watchdog_exits_once_unhealthy_for_long_enough() -> None:
    clock = Clock()
    live = Liveness(Limits(loop_stall_s=10, exit_after_s=0.2), clock)
    exited: list[int] = []
    done = threading.Event()

    def exit_process(code: int) -> None:
        exited.append(code)
        done.set()

    watchdog = Watchdog(live, exit_process, period_s=0.01).start()
    try:
        assert not done.wait(0.3)  # healthy: it never exits
        clock.now += 11
        assert done.wait(5), "the watchdog did not exit"
        assert exited == [EXIT_UNHEALTHY]
    finally:
        watchdog.stop()


def test_a_watchdog_told_never_to_exit_leaves_it_to_the_probe() -> None:
    clock = Clock()
    live = Liveness(Limits(loop_stall_s=10, exit_after_s=0), clock)
    clock.now += 11
    exited: list[int] = []
    watchdog = Watchdog(live, exited.append, period_s=0.01).start()
    threading.Event().wait(0.2)
    watchdog.stop()
    assert exited == [] and not live.healthy()
