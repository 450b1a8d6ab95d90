"""The Prometheus provider and the checks against a real Prometheus scraping simulated servers.

The session fixture starts the Debian ``prometheus`` binary (its own process, free port, temp
dir, scrape interval 1s) and an in-process exporter whose traffic the tests choose. Tests wait
on conditions (series visible, a verdict reached) with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_testbed import (
    NAMESPACE,
    CannedResponse,
    FakeHTTP,
    Fleet,
    Profile,
    PrometheusProcess,
    eventually,
    free_port,
    serve_fleet,
    wait_for,
)

from modelrollout.api.models import CompareSpec, MetricCheck, MetricResult, MetricTemplate, Verdict
from modelrollout.metrics.analysis import QueryContext, run_checks
from modelrollout.metrics.base import NoData, ProviderError, Value, Vector
from modelrollout.metrics.prometheus import (
    PrometheusProvider,
    QueryEvent,
    parse_instant,
    parse_range,
    parse_vector,
)
from modelrollout.metrics.templates import render

INTERVAL = timedelta(seconds=5)

HOSTILE = {
    'a"} or vector(1) or {x="': 7.0,
    "back\\slash": 8.0,
    "new\nline": 9.0,
    "ünï-cødé ✓ 模型": 10.0,
    "a.b": 11.0,
    "axb": 12.0,
}

ALWAYS_ON = {
    "healthy-b": Profile(error_share=0.0),
    "idle-b": Profile(rps=0.0),
    "lat-a": Profile(latency_median=0.100),
    "lat-slow-b": Profile(latency_median=0.130),
    "lat-near-b": Profile(latency_median=0.102),
    "score-a": Profile(rps=60, score_beta=(2.0, 5.0)),
    "score-same-b": Profile(rps=60, score_beta=(2.0, 5.0)),
    "score-shifted-b": Profile(rps=60, score_beta=(4.0, 4.0)),
}


class Bed:
    def __init__(self, fleet: Fleet, prometheus: PrometheusProcess) -> None:
        self.fleet = fleet
        self.prometheus = prometheus
        self.address = prometheus.address


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    fleet = Fleet(seed=42)
    for service, profile in ALWAYS_ON.items():
        fleet.activate(service, profile)
    fleet.probes.update(HOSTILE)
    with serve_fleet(fleet) as port:
        prometheus = PrometheusProcess(
            Path(tmp_path_factory.mktemp("prometheus")), [f"127.0.0.1:{port}"]
        )
        try:
            prometheus.wait_ready()
            wait_for(
                lambda: prometheus.value('up{job="sim"}') == 1, 30, "first scrape of the fleet"
            )
            yield Bed(fleet, prometheus)
        finally:
            prometheus.stop()


@pytest.fixture
async def provider(testbed: Bed) -> AsyncIterator[PrometheusProvider]:
    p = PrometheusProvider(testbed.address, timeout=5.0)
    yield p
    await p.aclose()


def ctx(candidate: str, stable: str = "healthy-b") -> QueryContext:
    return QueryContext(
        namespace=NAMESPACE,
        rollout="fraud",
        stable_service=stable,
        candidate_service=candidate,
        stage="canary-5",
        version="1.0.0",
        interval=INTERVAL,
    )


def now() -> datetime:
    return datetime.now(UTC)


async def one(check: MetricCheck, context: QueryContext, provider: PrometheusProvider,
              ready_at: datetime | None = None) -> MetricResult:  # fmt: skip
    [result] = await run_checks([check], context, provider, now(), ready_at)
    return result


def never_successful(result: MetricResult) -> None:
    assert result.verdict is not Verdict.SUCCESSFUL, result


def not_inconclusive(result: MetricResult) -> bool:
    return result.verdict is not Verdict.INCONCLUSIVE


ERROR_RATE = MetricCheck(name="error-rate", template=MetricTemplate.ERROR_RATE, max=0.01)


# ----------------------------------------------------------------------------- threshold checks


async def test_five_percent_errors_fail_within_one_interval(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    testbed.fleet.activate("errors-b", Profile(error_share=0.05))
    selector = 'model_requests_total{service="errors-b",code="500"}'
    wait_for(lambda: testbed.prometheus.has_series(selector), 15, "errors-b visible")
    shown = time.monotonic()
    result = await eventually(
        lambda: one(ERROR_RATE, ctx("errors-b"), provider),
        not_inconclusive,
        timeout=INTERVAL.total_seconds() + 3,
        what="a verdict on errors-b",
        each=never_successful,
    )
    assert time.monotonic() - shown <= INTERVAL.total_seconds() + 3
    assert result.verdict is Verdict.FAILED, result
    assert result.value == pytest.approx(0.05, abs=0.01)
    assert result.bound == "<= 0.01"
    assert result.query is not None and 'service="errors-b"' in result.query


async def test_healthy_service_is_successful(testbed: Bed, provider: PrometheusProvider) -> None:
    # healthy-b never answered 5xx: no code="500" series at all, which must read as 0, not no data
    result = await eventually(
        lambda: one(ERROR_RATE, ctx("healthy-b"), provider),
        not_inconclusive,
        timeout=15,
        what="a verdict on healthy-b",
    )
    assert result.verdict is Verdict.SUCCESSFUL, result
    assert result.value == 0.0


async def test_empty_result_is_inconclusive(testbed: Bed, provider: PrometheusProvider) -> None:
    result = await one(ERROR_RATE, ctx("no-such-service"), provider)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "no series" in (result.message or "")


async def test_nan_is_inconclusive(testbed: Bed, provider: PrometheusProvider) -> None:
    # idle-b has a request counter that never moves: 0/0 = NaN
    wait_for(
        lambda: testbed.prometheus.has_series('model_requests_total{service="idle-b"}', 3),
        15,
        "idle-b visible",
    )
    result = await eventually(
        lambda: one(ERROR_RATE, ctx("idle-b"), provider),
        lambda r: "NaN" in (r.message or ""),
        timeout=10,
        what="NaN on idle-b",
        each=never_successful,
    )
    assert result.verdict is Verdict.INCONCLUSIVE


async def test_latency_template_reads_seconds(testbed: Bed, provider: PrometheusProvider) -> None:
    check = MetricCheck(name="p50", template=MetricTemplate.LATENCY_P50, max=0.3)
    result = await eventually(
        lambda: one(check, ctx("lat-a"), provider), not_inconclusive, 15, "p50 of lat-a"
    )
    assert result.verdict is Verdict.SUCCESSFUL
    assert result.value == pytest.approx(0.100, rel=0.1)


# ----------------------------------------------------------------------------- provider errors


async def test_unreachable_server_is_an_error() -> None:
    dead = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    try:
        outcome = await dead.query("up")
        assert isinstance(outcome, ProviderError)
        assert "cannot reach Prometheus" in outcome.reason
        assert "Connection refused" in outcome.reason
        assert await dead.is_online() is False
        [result] = await run_checks([ERROR_RATE], ctx("healthy-b"), dead, now(), None)
        assert result.verdict is Verdict.ERROR
    finally:
        await dead.aclose()


async def test_slow_server_times_out() -> None:
    slow = FakeHTTP(CannedResponse(body=b'{"status":"success","data":{"result":[]}}', delay=10))
    provider = PrometheusProvider(slow.address, timeout=0.5)
    try:
        started = time.monotonic()
        outcome = await provider.query("up")
        assert time.monotonic() - started < 3
        assert outcome == ProviderError(f"Prometheus at {slow.address} did not answer within 0.5s")
    finally:
        await provider.aclose()
        slow.close()


@pytest.mark.parametrize(
    ("response", "text"),
    [
        (CannedResponse(body=b"this is not json"), "malformed response"),
        (CannedResponse(body=b'{"status":"success"}'), "malformed response"),
        (CannedResponse(body=b'{"data":{"result":{"a":1}}}'), "malformed response"),
        (
            CannedResponse(502, b"<html>Bad Gateway</html>", "text/html"),
            "HTTP 502: <html>Bad Gateway",
        ),
        (CannedResponse(401, b"Unauthorized", "text/plain"), "HTTP 401: Unauthorized"),
    ],
)
async def test_broken_answers_are_errors(response: CannedResponse, text: str) -> None:
    server = FakeHTTP(response)
    provider = PrometheusProvider(server.address, timeout=2.0)
    try:
        for outcome in (
            await provider.query("up"),
            await provider.query_range("up", now() - timedelta(minutes=1), now(), 5),
            await provider.query_vector("up"),
        ):
            assert isinstance(outcome, ProviderError), outcome
            assert text in outcome.reason
    finally:
        await provider.aclose()
        server.close()


async def test_bad_promql_is_an_error_with_prometheus_message(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    outcome = await provider.query("sum(rate(model_requests_total[1m]")
    assert isinstance(outcome, ProviderError)
    assert "HTTP 400" in outcome.reason and "bad_data" in outcome.reason
    assert "parse error" in outcome.reason
    check = MetricCheck(
        name="bad", query='rate(model_requests_total{service="{{ target }}"}', max=1
    )
    result = await one(check, ctx("healthy-b"), provider)
    assert result.verdict is Verdict.ERROR
    assert "parse error" in (result.message or "")


async def test_several_series_is_an_error(testbed: Bed, provider: PrometheusProvider) -> None:
    outcome = await provider.query(f'model_requests_total{{namespace="{NAMESPACE}"}}')
    assert isinstance(outcome, ProviderError)
    assert "series, expected 1" in outcome.reason


async def test_scalar_and_vector_results(testbed: Bed, provider: PrometheusProvider) -> None:
    assert await provider.query("scalar(vector(2.5))") == Value(2.5)
    assert isinstance(await provider.query("vector(1) / 0"), NoData)  # +Inf
    vector = await provider.query_vector('probe_label{value=~"a.*"}')
    assert isinstance(vector, Vector) and len(vector.series) >= 3
    assert await provider.is_online() is True


async def test_query_observer_sees_every_query(testbed: Bed) -> None:
    events: list[QueryEvent] = []
    observed = PrometheusProvider(testbed.address, timeout=5.0, on_query=events.append)
    try:
        await observed.query("vector(1)")
        await observed.query("no_such_metric")
        await observed.query("sum(")
    finally:
        await observed.aclose()
    assert [(e.kind, e.outcome) for e in events] == [
        ("instant", "value"),
        ("instant", "no_data"),
        ("instant", "error"),
    ]
    assert all(0 < e.seconds < 5 and e.address == testbed.address for e in events)


# ----------------------------------------------------------------- the reference client agrees

REFERENCE_QUERIES = [
    f'sum(model_requests_total{{namespace="{NAMESPACE}"}})',
    'probe_label{value=~"a.*"}',
    "scalar(vector(2.5))",
    "no_such_metric",
    f'model_requests_total{{namespace="{NAMESPACE}"}}',  # several series
]


@pytest.mark.parametrize("query", REFERENCE_QUERIES)
async def test_answers_match_prometheus_api_client(
    testbed: Bed, provider: PrometheusProvider, query: str
) -> None:
    # prometheus-api-client (blocking, on requests) is the reference for the query API this
    # provider speaks on httpx: asked the same at the same instant, both read the same.
    reference = PrometheusConnect(url=testbed.address, disable_ssl=True)
    at, start = now() - timedelta(seconds=5), now() - timedelta(seconds=35)
    instant = await asyncio.to_thread(reference.custom_query, query, {"time": at.timestamp()})
    assert await provider.query(query, at) == parse_instant(instant)
    assert await provider.query_vector(query, at) == parse_vector(instant)
    if query.startswith("scalar"):
        return  # a range query of a scalar is a matrix of one unlabelled series: same as sum()
    ranged = await asyncio.to_thread(reference.custom_query_range, query, start, at, "5")
    assert await provider.query_range(query, start, at, 5) == parse_range(ranged)


# ----------------------------------------------------------------------------- escaping, for real


@pytest.mark.parametrize("value", list(HOSTILE))
async def test_hostile_label_values_match_exactly(
    testbed: Bed, provider: PrometheusProvider, value: str
) -> None:
    query = render('sum(probe_label{value="{{ target }}"})', {"target": value})
    assert await provider.query(query) == Value(HOSTILE[value])


async def test_regex_matcher_value_matches_literally(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    query = render('sum(probe_label{value=~"{{ target }}"})', {"target": "a.b"})
    assert await provider.query(query) == Value(HOSTILE["a.b"])  # not a.b + axb


# ----------------------------------------------------------------------------- comparison, drift

LATENCY_VS_STABLE = MetricCheck(
    name="latency-vs-stable",
    template=MetricTemplate.LATENCY_P99,
    compare=CompareSpec(confidence=0.98, tolerance=0.25, step="1s", min_samples=10),
)


async def test_comparison_catches_a_30_percent_latency_shift(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    result = await eventually(
        lambda: one(
            LATENCY_VS_STABLE, ctx("lat-slow-b", "lat-a"), provider, now() - timedelta(seconds=20)
        ),
        not_inconclusive,
        timeout=40,
        what="a comparison verdict",
    )
    assert result.verdict is Verdict.FAILED, result
    assert result.value is not None and result.stable_value is not None
    assert result.value / result.stable_value == pytest.approx(1.3, abs=0.1)
    assert result.p_value is not None and result.p_value < 0.02
    assert result.bound == "mann-whitney increase, confidence 0.98, tolerance 0.25"


async def test_comparison_tolerates_a_2_percent_latency_shift(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    result = await eventually(
        lambda: one(
            LATENCY_VS_STABLE, ctx("lat-near-b", "lat-a"), provider, now() - timedelta(seconds=20)
        ),
        not_inconclusive,
        timeout=40,
        what="a comparison verdict",
    )
    assert result.verdict is Verdict.SUCCESSFUL, result


PSI = MetricCheck(name="prediction-drift", template=MetricTemplate.PREDICTION_PSI, max=0.2)


async def test_psi_catches_a_shifted_score_distribution(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    result = await eventually(
        lambda: one(
            PSI, ctx("score-shifted-b", "score-a"), provider, now() - timedelta(seconds=20)
        ),
        not_inconclusive,
        timeout=20,
        what="a drift verdict",
        each=never_successful,
    )
    assert result.verdict is Verdict.FAILED, result
    assert result.value is not None and result.value > 0.2


async def test_psi_passes_an_identical_score_distribution(
    testbed: Bed, provider: PrometheusProvider
) -> None:
    result = await eventually(
        lambda: one(PSI, ctx("score-same-b", "score-a"), provider, now() - timedelta(seconds=20)),
        not_inconclusive,
        timeout=20,
        what="a drift verdict",
    )
    assert result.verdict is Verdict.SUCCESSFUL, result
    assert result.value is not None and result.value < 0.1
    assert result.bound == "PSI <= 0.2"
