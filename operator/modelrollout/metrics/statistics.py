"""Statistics behind the comparison and drift checks: Mann-Whitney U, relative change, PSI."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from modelrollout.api.models import Direction

PSI_EPSILON = 1e-4
"""Proportion used in place of an empty bucket, so ln(p/q) stays finite."""

_ALTERNATIVE = {
    Direction.INCREASE: "greater",
    Direction.DECREASE: "less",
    Direction.EITHER: "two-sided",
}


def mann_whitney_p(
    candidate: Sequence[float], stable: Sequence[float], direction: Direction
) -> float:
    """p-value of the Mann-Whitney U test that the candidate moved in ``direction``.

    ``increase`` tests candidate > stable (one-sided), ``decrease`` candidate < stable, ``either``
    is two-sided. scipy picks the exact distribution for small samples without ties and the
    normal approximation (tie- and continuity-corrected) otherwise. When every sample on both
    sides is the same number there is no evidence of any change: p = 1.
    """
    if not candidate or not stable:
        raise ValueError("both samples must be non-empty")
    if len(set(candidate) | set(stable)) == 1:
        return 1.0
    # Imported on first use: scipy.stats costs ~60 MiB of resident memory, and an operator
    # whose rollouts have no comparison check never needs it.
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(candidate, stable, alternative=_ALTERNATIVE[direction])
    return float(result.pvalue)


def relative_change(candidate: float, stable: float) -> float:
    """(candidate - stable) / |stable|; ±inf if only stable is 0, 0 if both are."""
    if stable == 0:
        if candidate == 0:
            return 0.0
        return math.copysign(math.inf, candidate)
    return (candidate - stable) / abs(stable)


def bucket_counts(cumulative: Mapping[float, float]) -> np.ndarray:
    """Per-bucket counts from a Prometheus histogram's cumulative ``le`` counts.

    ``cumulative`` maps each upper bound (``math.inf`` for ``+Inf``) to the count of observations
    <= that bound. The result is ordered by bound. Small negative differences (``increase()``
    extrapolates each bucket separately) are clipped to 0.
    """
    if math.inf not in cumulative:
        raise ValueError("histogram has no +Inf bucket")
    bounds = sorted(cumulative)
    values = np.array([cumulative[b] for b in bounds], dtype=float)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("histogram bucket counts must be finite and non-negative")
    per_bucket = np.diff(values, prepend=0.0)
    return np.clip(per_bucket, 0.0, None)


def psi(
    stable: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of two binned distributions (counts over the same bins).

    PSI = sum((c_i - s_i) * ln(c_i / s_i)) over bins, with c and s the proportions; an empty
    bin's proportion is replaced by ``epsilon``. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate
    shift, > 0.2 significant shift.
    """
    s = np.asarray(stable, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if s.shape != c.shape or s.ndim != 1 or s.size == 0:
        raise ValueError("both distributions need the same, non-zero number of bins")
    if s.sum() <= 0 or c.sum() <= 0:
        raise ValueError("both distributions need at least one observation")
    s = np.maximum(s / s.sum(), epsilon)
    c = np.maximum(c / c.sum(), epsilon)
    return float(np.sum((c - s) * np.log(c / s)))
