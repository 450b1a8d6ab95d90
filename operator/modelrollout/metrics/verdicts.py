"""Pure verdicts: provider outcomes in, a :class:`Judgement` out. No I/O.

Never a pass on missing data: no data, NaN, ±Inf and too few samples are Inconclusive; a provider
error is Error; only a breach is Failed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from modelrollout.api.models import CompareSpec, Direction, Verdict
from modelrollout.metrics.base import (
    InstantOutcome,
    NoData,
    ProviderError,
    RangeOutcome,
    Samples,
    Vector,
    VectorOutcome,
)
from modelrollout.metrics.statistics import bucket_counts, mann_whitney_p, psi, relative_change

MIN_DISTRIBUTION_OBSERVATIONS = 500
"""Fewer observations than this on either side makes a drift check Inconclusive.

PSI of two samples of one distribution is biased upwards, badly so for the U-shaped score
histograms of a confident classifier (most buckets nearly empty, and an empty bucket's
proportion is floored at PSI_EPSILON). For the lab's model, two samples of the same good model
give PSI > 0.2 with probability 0.94 at 50 observations per side, 0.18 at 200, 0.02 at 300 and
5e-5 at 500: below 500 a good version is rolled back for noise."""


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str
    value: float | None = None
    stable_value: float | None = None
    p_value: float | None = None


def _fmt(x: float) -> str:
    return format(x, ".6g")


def threshold_bound(min_value: float | None, max_value: float | None) -> str:
    """The bound as status shows it: ``<= 0.01``, ``>= 5`` or ``>= 1 and <= 5``."""
    parts = []
    if min_value is not None:
        parts.append(f">= {_fmt(min_value)}")
    if max_value is not None:
        parts.append(f"<= {_fmt(max_value)}")
    return " and ".join(parts)


def compare_bound(spec: CompareSpec) -> str:
    """The test as status shows it: ``mann-whitney increase, confidence 0.98, tolerance 0.25``."""
    return (
        f"{spec.test.value} {spec.direction.value}, confidence {_fmt(spec.confidence)}, "
        f"tolerance {_fmt(spec.tolerance)}"
    )


def judge_value(value: float | None, min_value: float | None, max_value: float | None) -> Judgement:
    """A number against its bounds. None, NaN and ±Inf are Inconclusive, never a pass."""
    if value is None or not math.isfinite(value):
        return Judgement(Verdict.INCONCLUSIVE, f"no usable value ({value})", value=None)
    if min_value is None and max_value is None:
        return Judgement(
            Verdict.ERROR, "the check has no bound: set min, max or compare", value=value
        )
    if min_value is not None and value < min_value:
        return Judgement(Verdict.FAILED, f"{_fmt(value)} < min {_fmt(min_value)}", value=value)
    if max_value is not None and value > max_value:
        return Judgement(Verdict.FAILED, f"{_fmt(value)} > max {_fmt(max_value)}", value=value)
    return Judgement(
        Verdict.SUCCESSFUL,
        f"{_fmt(value)} within {threshold_bound(min_value, max_value)}",
        value=value,
    )


def judge_threshold(
    outcome: InstantOutcome, min_value: float | None, max_value: float | None
) -> Judgement:
    """An instant query's outcome against ``min``/``max``."""
    if isinstance(outcome, ProviderError):
        return Judgement(Verdict.ERROR, f"provider error: {outcome.reason}")
    if isinstance(outcome, NoData):
        return Judgement(Verdict.INCONCLUSIVE, f"no data: {outcome.reason}")
    return judge_value(outcome.value, min_value, max_value)


def _side_problem(
    candidate: RangeOutcome | VectorOutcome, stable: RangeOutcome | VectorOutcome
) -> Judgement | None:
    """Error if either side errored, else Inconclusive if either has no data, else None."""
    for side, outcome in (("candidate", candidate), ("stable", stable)):
        if isinstance(outcome, ProviderError):
            return Judgement(Verdict.ERROR, f"provider error ({side}): {outcome.reason}")
    for side, outcome in (("candidate", candidate), ("stable", stable)):
        if isinstance(outcome, NoData):
            return Judgement(Verdict.INCONCLUSIVE, f"no data ({side}): {outcome.reason}")
    return None


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _is_worse(change: float, direction: Direction, tolerance: float) -> bool:
    if direction is Direction.INCREASE:
        return change > tolerance
    if direction is Direction.DECREASE:
        return change < -tolerance
    return abs(change) > tolerance


def judge_comparison(candidate: RangeOutcome, stable: RangeOutcome, spec: CompareSpec) -> Judgement:
    """Candidate vs stable samples: Failed only if the Mann-Whitney test is significant at
    ``confidence`` *and* the median moved by more than ``tolerance`` (relative) the bad way."""
    problem = _side_problem(candidate, stable)
    if problem is not None:
        return problem
    assert isinstance(candidate, Samples) and isinstance(stable, Samples)
    cand, stab = _finite(candidate.values), _finite(stable.values)
    if len(cand) < spec.min_samples or len(stab) < spec.min_samples:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"too few samples: candidate {len(cand)}, stable {len(stab)}; "
            f"need {spec.min_samples} per side",
        )
    med_c, med_s = statistics.median(cand), statistics.median(stab)
    p_value = mann_whitney_p(cand, stab, spec.direction)
    change = relative_change(med_c, med_s)
    alpha = 1.0 - spec.confidence
    significant = p_value < alpha
    worse = _is_worse(change, spec.direction, spec.tolerance)
    summary = (
        f"candidate median {_fmt(med_c)} vs stable {_fmt(med_s)} ({change:+.1%}), "
        f"p={p_value:.3g} ({'' if significant else 'not '}significant at alpha {_fmt(alpha)})"
    )
    if significant and worse:
        verdict, why = Verdict.FAILED, f"change beyond tolerance {spec.tolerance:.0%}"
    elif significant:
        verdict, why = Verdict.SUCCESSFUL, f"change within tolerance {spec.tolerance:.0%}"
    else:
        verdict, why = Verdict.SUCCESSFUL, "no significant change"
    return Judgement(verdict, f"{summary}: {why}", value=med_c, stable_value=med_s, p_value=p_value)


def _cumulative(vector: Vector, side: str) -> dict[float, float]:
    buckets: dict[float, float] = {}
    for series in vector.series:
        le = series.labels.get("le")
        if le is None:
            raise ValueError(
                f"{side} series {series.labels} has no le label; the query must return "
                "histogram buckets summed by le"
            )
        try:
            bound = float(le)
        except ValueError as exc:
            raise ValueError(f"{side} series has a non-numeric le label {le!r}") from exc
        if bound in buckets:
            raise ValueError(
                f"{side} has several series for le={le}; aggregate them with sum by (le)"
            )
        buckets[bound] = series.value
    return buckets


def judge_drift(
    candidate: VectorOutcome,
    stable: VectorOutcome,
    min_value: float | None,
    max_value: float | None,
    min_observations: int = MIN_DISTRIBUTION_OBSERVATIONS,
) -> Judgement:
    """PSI of the candidate's score histogram against the stable's, judged against min/max."""
    problem = _side_problem(candidate, stable)
    if problem is not None:
        return problem
    assert isinstance(candidate, Vector) and isinstance(stable, Vector)
    try:
        cand_buckets = _cumulative(candidate, "candidate")
        stab_buckets = _cumulative(stable, "stable")
        if set(cand_buckets) != set(stab_buckets):
            raise ValueError(
                f"bucket boundaries differ: candidate {sorted(cand_buckets)}, "
                f"stable {sorted(stab_buckets)}"
            )
        cand_counts = bucket_counts(cand_buckets)
        stab_counts = bucket_counts(stab_buckets)
    except ValueError as exc:
        return Judgement(Verdict.ERROR, f"cannot read the histograms: {exc}")
    cand_total, stab_total = float(cand_counts.sum()), float(stab_counts.sum())
    if cand_total < min_observations or stab_total < min_observations:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"too few observations: candidate {cand_total:.0f}, stable {stab_total:.0f}; "
            f"need {min_observations} per side",
        )
    index = psi(stab_counts, cand_counts)
    judged = judge_value(index, min_value, max_value)
    observed = f"(candidate {cand_total:.0f} observations, stable {stab_total:.0f})"
    return Judgement(judged.verdict, f"PSI {judged.message} {observed}", value=index)
