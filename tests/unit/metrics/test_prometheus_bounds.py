"""Every Prometheus query is bounded: a total deadline, a size cap, its namespace's share.

Against hostile servers on 127.0.0.1 (tests/loopback.py): one that trickles a byte every half
second (requests' per-read timeout never fired on it), one that streams a 400 MB answer, one
that never answers, and many of those in one namespace while another namespace asks a
healthy server.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from modelrollout.api.models import PrometheusSpec
from modelrollout.metrics.base import ProviderError, Value
from modelrollout.metrics.prometheus import (
    BODY_LIMIT,
    PER_NAMESPACE,
    PrometheusProvider,
    PrometheusProviderFactory,
)
from modelrollout.outbound.text import CUT_MARKER, MAX_ERROR_TEXT
from tests import loopback
from tests.loopback import LocalServer, serve

MIB = 1024 * 1024
ANSWER = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {}, "value": [1700000000, "7"]}]}}  # fmt: skip


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[LocalServer, asyncio.Event, loopback.Endless]]:
    release = asyncio.Event()
    huge = loopback.endless(400 * MIB)

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response(ANSWER)

    async def verbose_error(_: web.Request) -> web.Response:
        return web.Response(status=500, text="<html>" + "e" * 5000)

    routes = {
        "/trickle/api/v1/query": loopback.trickle(release, 0.5),
        "/huge/api/v1/query": huge,
        "/ok/api/v1/query": healthy,
        "/verbose/api/v1/query": verbose_error,
    }
    runner, local = await serve(routes)
    yield local, release, huge
    release.set()
    await runner.cleanup()


async def test_a_trickling_server_is_cut_off_at_the_deadline(
    hostile: tuple[LocalServer, asyncio.Event, loopback.Endless],
) -> None:
    local, _, _ = hostile
    provider = PrometheusProvider(f"{local.url}/trickle", timeout=1.0)
    started = time.monotonic()
    outcome = await provider.query("up")
    await provider.aclose()
    assert time.monotonic() - started < 5  # the server would go on for as long as it is let
    assert outcome == ProviderError(f"Prometheus at {local.url}/trickle did not answer within 1s")


async def test_a_400_mb_answer_stops_at_the_limit_and_costs_no_memory(
    hostile: tuple[LocalServer, asyncio.Event, loopback.Endless],
) -> None:
    local, _, huge = hostile
    provider = PrometheusProvider(f"{local.url}/huge", timeout=20.0)
    tracemalloc.start()
    try:
        outcome = await provider.query("up")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await provider.aclose()
    assert isinstance(outcome, ProviderError)
    assert outcome.reason == (
        f"Prometheus at {local.url}/huge: answer larger than the 1 MiB limit; reading stopped there"
    )
    assert BODY_LIMIT == MIB
    # the whole process, the in-process server's buffers included (about 5 MiB measured)
    assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert huge.sent < 40 * MIB, f"{huge.sent / MIB:.0f} MiB were sent"


async def test_a_blackholed_server_ends_at_the_deadline() -> None:
    with loopback.blackhole() as url:
        provider = PrometheusProvider(url, timeout=1.0)
        started = time.monotonic()
        outcome = await provider.query_range("up", start=_now(-60), end=_now(0), step_seconds=5)
        await provider.aclose()
    assert time.monotonic() - started < 5
    assert outcome == ProviderError(f"Prometheus at {url} did not answer within 1s")


async def test_an_error_body_is_never_echoed_whole(
    hostile: tuple[LocalServer, asyncio.Event, loopback.Endless],
) -> None:
    local, _, _ = hostile
    provider = PrometheusProvider(f"{local.url}/verbose", timeout=2.0)
    outcome = await provider.query("up")
    await provider.aclose()
    assert isinstance(outcome, ProviderError)
    assert "answered HTTP 500: <html>eee" in outcome.reason
    assert len(outcome.reason) <= MAX_ERROR_TEXT and outcome.reason.endswith(CUT_MARKER)


async def test_one_namespace_of_blackholed_queries_does_not_delay_another(
    hostile: tuple[LocalServer, asyncio.Event, loopback.Endless],
) -> None:
    # All providers once shared eight threads: eight slow checks and every other tenant's
    # analysis waited. Now namespace "noisy" holds its share and "quiet" is answered at once.
    local, _, _ = hostile
    factory = PrometheusProviderFactory()

    async def no_secrets(ref: object) -> str:
        raise AssertionError("no Secret is named")

    with loopback.blackhole() as url:
        noisy = await factory.provider_for(
            PrometheusSpec(address=url, timeout="30s"), no_secrets, "noisy"
        )
        stuck = [asyncio.create_task(noisy.query("up")) for _ in range(200)]
        try:
            await loopback.until(lambda: factory.limiter.held("noisy") >= PER_NAMESPACE)
            quiet = await factory.provider_for(
                PrometheusSpec(address=f"{local.url}/ok"), no_secrets, "quiet"
            )
            assert await asyncio.wait_for(quiet.query("up"), timeout=5) == Value(7.0)
            assert not any(task.done() for task in stuck)
            assert factory.limiter.held("noisy") == PER_NAMESPACE
        finally:
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            await factory.aclose()


def _now(offset_s: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset_s)
