"""run_checks with a recording fake provider: which queries run, over which window, with what."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from modelrollout.api.models import CompareSpec, MetricCheck, MetricTemplate, Verdict
from modelrollout.metrics.analysis import (
    QueryContext,
    analysis_window,
    run_checks,
    validate_check,
)
from modelrollout.metrics.base import (
    InstantOutcome,
    NoData,
    RangeOutcome,
    Samples,
    Series,
    Value,
    Vector,
    VectorOutcome,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CTX = QueryContext(
    namespace="ml",
    rollout="fraud",
    stable_service="fraud-a",
    candidate_service="fraud-b",
    stage="canary-5",
    version="2.4.0",
    interval=timedelta(minutes=1),
)


@dataclass
class FakeProvider:
    """Answers by service: the candidate's query gets ``candidate``, the stable's ``stable``."""

    candidate: float = 0.0
    stable: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)
    instant: list[tuple[str, datetime | None]] = field(default_factory=list)
    ranges: list[tuple[str, datetime, datetime, float]] = field(default_factory=list)

    async def query(self, promql: str, at: datetime | None = None) -> InstantOutcome:
        self.instant.append((promql, at))
        return Value(self.candidate if 'service="fraud-b"' in promql else self.stable)

    async def query_range(
        self, promql: str, start: datetime, end: datetime, step_seconds: float
    ) -> RangeOutcome:
        self.ranges.append((promql, start, end, step_seconds))
        side = "candidate" if 'service="fraud-b"' in promql else "stable"
        return Samples(self.samples[side]) if side in self.samples else NoData("no series")

    async def is_online(self) -> bool:
        return True


@dataclass
class FakeVectorProvider(FakeProvider):
    vectors: list[str] = field(default_factory=list)

    async def query_vector(self, promql: str, at: datetime | None = None) -> VectorOutcome:
        self.vectors.append(promql)
        per_bucket = [500.0, 500.0] if 'service="fraud-b"' in promql else [900.0, 100.0]
        return Vector(
            (
                Series({"le": "0.5"}, per_bucket[0]),
                Series({"le": "1.0"}, sum(per_bucket)),
                Series({"le": "+Inf"}, sum(per_bucket)),
            )
        )


def _unchecked(**fields: object) -> MetricCheck:
    """A check that skipped pydantic validation, as a bad spec might reach run_checks."""
    return MetricCheck.model_construct(**fields)  # type: ignore[arg-type]


ERROR_RATE = MetricCheck(name="error-rate", template=MetricTemplate.ERROR_RATE, max=0.01)


async def test_threshold_check_queries_the_candidate_at_now() -> None:
    provider = FakeProvider(candidate=0.05, stable=0.0)
    [result] = await run_checks([ERROR_RATE], CTX, provider, NOW, None)
    assert result.verdict is Verdict.FAILED
    assert result.value == 0.05
    assert result.bound == "<= 0.01"
    assert result.measured_at == NOW
    [(query, at)] = provider.instant
    assert at == NOW
    assert result.query == query
    assert 'namespace="ml",service="fraud-b"' in query and "[60s]" in query


@pytest.mark.parametrize(
    ("ready_for", "window"),
    [
        (timedelta(seconds=30), "[60s]"),
        (timedelta(seconds=90), "[90s]"),
        (timedelta(minutes=7), "[120s]"),
        (None, "[60s]"),
    ],
)
async def test_a_builtin_threshold_rates_since_the_stage_began_up_to_two_intervals(
    ready_for: timedelta | None, window: str
) -> None:
    # Two intervals at most, so consecutive runs' windows overlap and no scrape-to-scrape
    # increase falls between them; never before the stage began.
    provider = FakeProvider()
    ready_at = NOW - ready_for if ready_for is not None else None
    [result] = await run_checks([ERROR_RATE], CTX, provider, NOW, ready_at)
    assert result.query is not None and result.query.count(window) == 2, result.query


async def test_a_custom_threshold_query_gets_the_analysis_interval() -> None:
    query = 'rate(x{service="{{ target }}"}[{{ interval }}])'
    check = MetricCheck(name="custom", query=query, max=1)
    ready_at = NOW - timedelta(minutes=7)
    [result] = await run_checks([check], CTX, FakeProvider(), NOW, ready_at)
    assert result.query == 'rate(x{service="fraud-b"}[60s])'


async def test_healthy_threshold_is_successful() -> None:
    [result] = await run_checks([ERROR_RATE], CTX, FakeProvider(candidate=0.001), NOW, None)
    assert result.verdict is Verdict.SUCCESSFUL


async def test_checks_outside_the_stage_are_skipped_and_order_is_kept() -> None:
    checks = [
        MetricCheck(
            name="only-shadow", template=MetricTemplate.ERROR_RATE, max=1, stages=["shadow"]
        ),
        MetricCheck(name="p99", template=MetricTemplate.LATENCY_P99, max=0.3),
        MetricCheck(name="canary", query='up{job="{{ rollout }}"}', min=1, stages=["canary-5"]),
    ]
    results = await run_checks(checks, CTX, FakeProvider(candidate=1.0), NOW, None)
    assert [r.name for r in results] == ["p99", "canary"]
    assert results[1].query == 'up{job="fraud"}'


async def test_comparison_queries_both_sides_since_stage_ready() -> None:
    check = MetricCheck(
        name="latency-vs-stable",
        template=MetricTemplate.LATENCY_P99,
        compare=CompareSpec(confidence=0.98, tolerance=0.25, step="10s"),
    )
    provider = FakeProvider(samples={"candidate": [0.13] * 30, "stable": [0.10] * 30})
    ready = NOW - timedelta(minutes=5)
    [result] = await run_checks([check], CTX, provider, NOW, ready)
    assert result.verdict is Verdict.FAILED
    assert (result.value, result.stable_value) == (0.13, 0.10)
    assert result.p_value is not None and result.p_value < 0.02
    assert result.bound == "mann-whitney increase, confidence 0.98, tolerance 0.25"
    services = sorted(
        "fraud-b" if 'service="fraud-b"' in q else "fraud-a" for q, *_ in provider.ranges
    )
    assert services == ["fraud-a", "fraud-b"]
    for _query, start, end, step in provider.ranges:
        assert (start, end, step) == (ready, NOW, 10.0)
    assert 'service="fraud-b"' in (result.query or "")


async def test_comparison_window_is_at_least_the_interval() -> None:
    check = MetricCheck(name="cmp", query='x{service="{{ target }}"}', compare=CompareSpec())
    provider = FakeProvider(samples={"candidate": [1.0] * 20, "stable": [1.0] * 20})
    [result] = await run_checks([check], CTX, provider, NOW, NOW - timedelta(seconds=10))
    assert result.verdict is Verdict.SUCCESSFUL
    assert {start for _, start, _, _ in provider.ranges} == {NOW - timedelta(minutes=1)}


async def test_long_window_gets_a_coarser_step() -> None:
    check = MetricCheck(
        name="cmp", query='x{service="{{ target }}"}', compare=CompareSpec(window="48h", step="5s")
    )
    provider = FakeProvider(samples={"candidate": [1.0] * 20, "stable": [1.0] * 20})
    await run_checks([check], CTX, provider, NOW, None)
    for _, start, end, step in provider.ranges:
        assert end - start == timedelta(hours=48)
        assert (end - start).total_seconds() / step <= 11_000


async def test_comparison_without_samples_is_inconclusive() -> None:
    check = MetricCheck(name="cmp", template=MetricTemplate.LATENCY_P99, compare=CompareSpec())
    [result] = await run_checks([check], CTX, FakeProvider(), NOW, None)
    assert result.verdict is Verdict.INCONCLUSIVE


async def test_psi_uses_the_window_as_range_and_both_services() -> None:
    check = MetricCheck(name="drift", template=MetricTemplate.PREDICTION_PSI, max=0.2)
    provider = FakeVectorProvider()
    [result] = await run_checks([check], CTX, provider, NOW, NOW - timedelta(minutes=7))
    assert result.verdict is Verdict.FAILED  # 90/10 vs 50/50
    assert result.bound == "PSI <= 0.2"
    assert len(provider.vectors) == 2
    assert all("[420s]" in q for q in provider.vectors)
    assert {'service="fraud-a"' in q for q in provider.vectors} == {True, False}


async def test_psi_needs_a_vector_provider() -> None:
    check = MetricCheck(name="drift", template=MetricTemplate.PREDICTION_PSI, max=0.2)
    [result] = await run_checks([check], CTX, FakeProvider(), NOW, None)
    assert result.verdict is Verdict.ERROR
    assert "several series" in (result.message or "")


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (_unchecked(name="x", template=MetricTemplate.ERROR_RATE), "set min, max or compare"),
        (_unchecked(name="x", query='up{a="{{ nope }}"}', max=1), "unknown variable"),
        (_unchecked(name="x", query="up{a={{ rollout }}}", max=1), "double-quoted"),
        (_unchecked(name="x", max=1), "exactly one of template or query"),
        (
            _unchecked(name="x", template=MetricTemplate.ERROR_RATE, query="up", max=1),
            "exactly one of template or query",
        ),
        (
            _unchecked(name="x", template=MetricTemplate.PREDICTION_PSI, compare=CompareSpec()),
            "judge it with max",
        ),
        (
            _unchecked(name="x", template=MetricTemplate.ERROR_RATE, max=1, compare=CompareSpec()),
            "exclusive",
        ),
        (
            _unchecked(name="x", template=MetricTemplate.ERROR_RATE, min=2, max=1),
            "greater than max",
        ),
    ],
)
async def test_invalid_checks_are_refused_and_become_errors(
    check: MetricCheck, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_check(check)
    [result] = await run_checks([check], CTX, FakeProvider(), NOW, None)
    assert result.verdict is Verdict.ERROR
    assert message in (result.message or "")
    assert "check 'x'" in (result.message or "")


def test_hostile_names_reach_the_query_escaped() -> None:
    ctx = QueryContext(
        namespace="ml",
        rollout='r"} or vector(1) or {x="',
        stable_service="a",
        candidate_service="b",
        stage="s",
        version="1",
        interval=timedelta(seconds=30),
    )
    assert ctx.variables("b")["rollout"] == 'r"} or vector(1) or {x="'  # raw; escaped at render
    assert ctx.variables("b")["interval"] == "30s"


@pytest.mark.parametrize(
    ("ready", "explicit", "window"),
    [
        (None, None, timedelta(minutes=1)),
        (NOW - timedelta(seconds=20), None, timedelta(minutes=1)),
        (NOW - timedelta(minutes=9), None, timedelta(minutes=9)),
        (NOW - timedelta(minutes=9), timedelta(minutes=2), timedelta(minutes=2)),
    ],
)
def test_analysis_window(
    ready: datetime | None, explicit: timedelta | None, window: timedelta
) -> None:
    assert analysis_window(NOW, ready, timedelta(minutes=1), explicit) == window
