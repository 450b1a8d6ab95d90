"""Verdict tables: threshold, comparison, drift. Missing data is never a pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelrollout.api.models import CompareSpec, Direction, Verdict
from modelrollout.metrics.base import NoData, ProviderError, Samples, Series, Value, Vector
from modelrollout.metrics.verdicts import (
    compare_bound,
    judge_comparison,
    judge_drift,
    judge_threshold,
    threshold_bound,
)

S, F, INC, E = Verdict.SUCCESSFUL, Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.ERROR


@pytest.mark.parametrize(
    ("outcome", "min_value", "max_value", "verdict"),
    [
        (Value(0.005), None, 0.01, S),
        (Value(0.01), None, 0.01, S),  # the bound itself passes
        (Value(0.05), None, 0.01, F),
        (Value(0.0), None, 0.01, S),
        (Value(4.0), 5.0, None, F),
        (Value(5.0), 5.0, None, S),
        (Value(3.0), 1.0, 5.0, S),
        (Value(6.0), 1.0, 5.0, F),
        (Value(0.5), 1.0, 5.0, F),
        (Value(math.nan), None, 0.01, INC),
        (Value(math.inf), None, 0.01, INC),
        (Value(-math.inf), 0.0, None, INC),
        (NoData("query returned no series"), None, 0.01, INC),
        (ProviderError("connection refused"), None, 0.01, E),
        (Value(0.001), None, None, E),  # no bound at all: a configuration error, not a pass
    ],
)
def test_threshold(
    outcome: Value | NoData | ProviderError,
    min_value: float | None,
    max_value: float | None,
    verdict: Verdict,
) -> None:
    assert judge_threshold(outcome, min_value, max_value).verdict is verdict


def test_threshold_messages_and_value() -> None:
    failed = judge_threshold(Value(0.05), None, 0.01)
    assert failed.value == 0.05
    assert failed.message == "0.05 > max 0.01"
    assert (
        "connection refused"
        in judge_threshold(ProviderError("connection refused"), None, 1).message
    )
    assert judge_threshold(NoData("query returned no series"), None, 1).message == (
        "no data: query returned no series"
    )


@pytest.mark.parametrize(
    ("min_value", "max_value", "text"),
    [
        (None, 0.01, "<= 0.01"),
        (5.0, None, ">= 5"),
        (1.0, 5.0, ">= 1 and <= 5"),
        (None, 0.3, "<= 0.3"),
    ],
)
def test_threshold_bound_text(min_value: float | None, max_value: float | None, text: str) -> None:
    assert threshold_bound(min_value, max_value) == text


def test_compare_bound_text() -> None:
    spec = CompareSpec(direction=Direction.INCREASE, confidence=0.98, tolerance=0.25)
    assert compare_bound(spec) == "mann-whitney increase, confidence 0.98, tolerance 0.25"


# ----------------------------------------------------------------------------- comparison

RNG = np.random.default_rng(7)
BASE = list(RNG.normal(0.100, 0.005, 60))


def _shifted(factor: float) -> list[float]:
    return list(np.random.default_rng(11).normal(0.100 * factor, 0.005 * factor, 60))


SPEC = CompareSpec(direction=Direction.INCREASE, confidence=0.98, tolerance=0.25, min_samples=10)


def test_comparison_catches_a_30_percent_increase() -> None:
    judged = judge_comparison(Samples(_shifted(1.30)), Samples(BASE), SPEC)
    assert judged.verdict is F
    assert judged.p_value is not None and judged.p_value < 0.02
    assert judged.value == pytest.approx(0.130, rel=0.05)
    assert judged.stable_value == pytest.approx(0.100, rel=0.05)
    assert "beyond tolerance" in judged.message


def test_comparison_tolerates_a_significant_but_small_increase() -> None:
    judged = judge_comparison(Samples(_shifted(1.05)), Samples(BASE), SPEC)
    assert judged.p_value is not None and judged.p_value < 0.02  # significant...
    assert judged.verdict is S  # ...but within the 25% tolerance
    assert "within tolerance" in judged.message


def test_comparison_ignores_a_large_change_that_is_not_significant() -> None:
    noisy_stable = [0.1, 0.5, 0.2, 0.9, 0.15, 0.6, 0.3, 0.05, 0.8, 0.4]
    noisy_candidate = [x * 1.4 for x in noisy_stable]  # median +40%, but within the noise
    judged = judge_comparison(Samples(noisy_candidate), Samples(noisy_stable), SPEC)
    assert judged.p_value is not None and judged.p_value > 0.02
    assert judged.value == pytest.approx(0.49) and judged.stable_value == pytest.approx(0.35)
    assert judged.verdict is S
    assert "no significant change" in judged.message


def test_comparison_improvement_passes_when_increase_is_bad() -> None:
    assert judge_comparison(Samples(_shifted(0.5)), Samples(BASE), SPEC).verdict is S


@pytest.mark.parametrize(
    ("direction", "factor", "verdict"),
    [
        (Direction.DECREASE, 0.5, F),
        (Direction.DECREASE, 1.5, S),
        (Direction.EITHER, 0.5, F),
        (Direction.EITHER, 1.5, F),
        (Direction.EITHER, 1.02, S),
    ],
)
def test_comparison_directions(direction: Direction, factor: float, verdict: Verdict) -> None:
    spec = SPEC.model_copy(update={"direction": direction})
    assert judge_comparison(Samples(_shifted(factor)), Samples(BASE), spec).verdict is verdict


def test_comparison_identical_constant_samples_pass() -> None:
    judged = judge_comparison(Samples([0.2] * 20), Samples([0.2] * 20), SPEC)
    assert judged.verdict is S
    assert judged.p_value == 1.0


def test_comparison_needs_min_samples_per_side() -> None:
    judged = judge_comparison(Samples(BASE[:9]), Samples(BASE), SPEC)
    assert judged.verdict is INC
    assert "candidate 9, stable 60" in judged.message


def test_comparison_drops_nan_before_counting() -> None:
    judged = judge_comparison(Samples([math.nan] * 20 + BASE[:5]), Samples(BASE), SPEC)
    assert judged.verdict is INC


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict", "side"),
    [
        (ProviderError("timeout"), Samples(BASE), E, "candidate"),
        (Samples(BASE), ProviderError("timeout"), E, "stable"),
        (NoData("none"), Samples(BASE), INC, "candidate"),
        (Samples(BASE), NoData("none"), INC, "stable"),
        (NoData("none"), ProviderError("timeout"), E, "stable"),  # an error outranks no data
    ],
)
def test_comparison_sides(
    candidate: Samples | NoData | ProviderError,
    stable: Samples | NoData | ProviderError,
    verdict: Verdict,
    side: str,
) -> None:
    judged = judge_comparison(candidate, stable, SPEC)
    assert judged.verdict is verdict
    assert side in judged.message


def test_comparison_zero_stable_median() -> None:
    candidate = Samples([0.0] * 10 + [0.02] * 20)
    stable = Samples([0.0] * 30)
    assert judge_comparison(candidate, stable, SPEC).verdict is F


# ----------------------------------------------------------------------------- drift

BOUNDS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0", "+Inf"]


def _histogram(per_bucket: list[float]) -> Vector:
    cumulative = np.cumsum([*per_bucket, 0.0])  # nothing above 1.0
    return Vector(
        tuple(Series({"le": le}, float(c)) for le, c in zip(BOUNDS, cumulative, strict=True))
    )


# 1000 observations each: enough for a verdict (MIN_DISTRIBUTION_OBSERVATIONS is 500).
GOOD = [10 * g for g in (2.0, 3, 5, 10, 20, 20, 15, 10, 10, 5)]
SHIFTED = [10 * g for g in (10.0, 10, 15, 20, 20, 10, 5, 5, 3, 2)]


def test_drift_identical_distribution_passes() -> None:
    judged = judge_drift(_histogram(GOOD), _histogram([g * 3 for g in GOOD]), None, 0.2)
    assert judged.verdict is S
    assert judged.value == pytest.approx(0.0, abs=1e-9)


def test_drift_shifted_distribution_fails() -> None:
    judged = judge_drift(_histogram(SHIFTED), _histogram(GOOD), None, 0.2)
    assert judged.verdict is F
    assert judged.value is not None and judged.value > 0.2
    assert judged.message.startswith("PSI ")
    assert "candidate 1000 observations, stable 1000" in judged.message


def test_drift_too_few_observations_is_inconclusive() -> None:
    judged = judge_drift(_histogram([g / 4 for g in SHIFTED]), _histogram(GOOD), None, 0.2)
    assert judged.verdict is INC
    assert "too few observations" in judged.message


def test_drift_mismatched_buckets_is_an_error() -> None:
    fewer = Vector(tuple(s for s in _histogram(GOOD).series if s.labels["le"] != "0.5"))
    judged = judge_drift(fewer, _histogram(GOOD), None, 0.2)
    assert judged.verdict is E
    assert "bucket boundaries differ" in judged.message


def test_drift_series_without_le_is_an_error() -> None:
    judged = judge_drift(Vector((Series({"pod": "x"}, 3.0),)), _histogram(GOOD), None, 0.2)
    assert judged.verdict is E
    assert "no le label" in judged.message


def test_drift_duplicate_le_is_an_error() -> None:
    dup = Vector((*_histogram(GOOD).series, Series({"le": "+Inf", "pod": "p2"}, 100.0)))
    judged = judge_drift(dup, _histogram(GOOD), None, 0.2)
    assert judged.verdict is E
    assert "sum by (le)" in judged.message


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict"),
    [
        (NoData("none"), _histogram(GOOD), INC),
        (_histogram(GOOD), ProviderError("down"), E),
    ],
)
def test_drift_sides(
    candidate: Vector | NoData, stable: Vector | ProviderError, verdict: Verdict
) -> None:
    assert judge_drift(candidate, stable, None, 0.2).verdict is verdict
