"""PSI against hand-computed values; Mann-Whitney p-values against independent computations
(brute-force exact permutation distribution, and the normal approximation written out here)."""

from __future__ import annotations

import itertools
import math

import pytest

from modelrollout.api.models import Direction
from modelrollout.metrics.statistics import (
    PSI_EPSILON,
    bucket_counts,
    mann_whitney_p,
    psi,
    relative_change,
)

# ----------------------------------------------------------------------------- PSI


def test_psi_hand_computed() -> None:
    # stable proportions .5 .3 .2, candidate .3 .3 .4:
    # (.3-.5)ln(.3/.5) + 0 + (.4-.2)ln(.4/.2) = 0.2*0.5108256 + 0.2*0.6931472 = 0.2407946
    assert psi([50, 30, 20], [30, 30, 40]) == pytest.approx(0.2407946, abs=1e-7)


def test_psi_scales_counts_to_proportions() -> None:
    assert psi([500, 300, 200], [3, 3, 4]) == pytest.approx(0.2407946, abs=1e-7)


def test_psi_empty_bucket_uses_epsilon() -> None:
    # stable 1.0 / 0.0 -> 1.0 / 1e-4; candidate .5 / .5
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert expected == pytest.approx(4.6043185, abs=1e-6)
    assert psi([100, 0], [50, 50]) == pytest.approx(expected, rel=1e-12)


def test_psi_identical_is_zero() -> None:
    assert psi([10, 20, 30, 0], [1, 2, 3, 0]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("stable", "candidate"), [([1, 2], [1, 2, 3]), ([], []), ([0, 0], [1, 1])])
def test_psi_refuses_bad_input(stable: list[float], candidate: list[float]) -> None:
    with pytest.raises(ValueError):
        psi(stable, candidate)


def test_bucket_counts_from_cumulative() -> None:
    cumulative = {1.0: 30.0, 0.1: 5.0, math.inf: 30.0, 0.5: 20.0}
    assert bucket_counts(cumulative).tolist() == [5.0, 15.0, 10.0, 0.0]


def test_bucket_counts_clips_extrapolation_noise() -> None:
    assert bucket_counts({0.5: 10.2, 1.0: 10.0, math.inf: 12.0}).tolist() == pytest.approx(
        [10.2, 0.0, 2.0]
    )


def test_bucket_counts_needs_inf_bucket() -> None:
    with pytest.raises(ValueError, match=r"\+Inf"):
        bucket_counts({0.5: 1.0, 1.0: 2.0})


# ----------------------------------------------------------------------------- Mann-Whitney


def _u(xs: list[float], ys: list[float]) -> float:
    """U of xs: pairs where x > y, ties counted half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in xs for y in ys)


def _exact_p(xs: list[float], ys: list[float], direction: Direction) -> float:
    """Exact permutation p-value by enumerating every split of the pooled sample."""
    pooled = xs + ys
    observed = _u(xs, ys)
    greater = less = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(xs)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        u = _u([pooled[i] for i in chosen], rest)
        greater += u >= observed
        less += u <= observed
        total += 1
    if direction is Direction.INCREASE:
        return greater / total
    if direction is Direction.DECREASE:
        return less / total
    return min(1.0, 2 * min(greater, less) / total)


CAND = [1.2, 3.4, 5.1, 6.0, 7.7, 8.1]
STAB = [0.5, 1.0, 2.2, 2.9, 4.0, 4.4]


@pytest.mark.parametrize("direction", list(Direction))
def test_mann_whitney_exact_matches_brute_force(direction: Direction) -> None:
    assert mann_whitney_p(CAND, STAB, direction) == pytest.approx(
        _exact_p(CAND, STAB, direction), rel=1e-9
    )


def test_mann_whitney_exact_known_value() -> None:
    # U = 30 of 36. By symmetry P(U >= 30) = P(U <= 6); the splits with U = k are the
    # partitions of k into at most 6 parts of at most 6: 1+1+2+3+5+7+11 = 30 for k = 0..6,
    # out of C(12, 6) = 924 splits.
    assert _u(CAND, STAB) == 30
    assert _exact_p(CAND, STAB, Direction.INCREASE) == pytest.approx(30 / 924)
    assert mann_whitney_p(CAND, STAB, Direction.INCREASE) == pytest.approx(30 / 924, rel=1e-9)


def _average_ranks(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [
        ordered.index(v) + 1 + (ordered.count(v) - 1) / 2  # first position + half the tie run
        for v in values
    ]


def _normal_p(xs: list[float], ys: list[float], direction: Direction) -> float:
    """Normal approximation with tie and continuity correction, written out by hand."""
    n1, n2 = len(xs), len(ys)
    n = n1 + n2
    ranks = _average_ranks(xs + ys)
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    ties = sum(t**3 - t for t in (list(xs + ys).count(v) for v in set(xs + ys)))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))

    def upper(z: float) -> float:
        return 0.5 * math.erfc(z / math.sqrt(2))

    if direction is Direction.INCREASE:
        return upper((u - mu - 0.5) / sigma)
    if direction is Direction.DECREASE:
        return upper((mu - u - 0.5) / sigma)
    return min(1.0, 2 * upper((abs(u - mu) - 0.5) / sigma))


# latencies rounded to the millisecond, so ties are common
NORMAL_CAND = [0.131, 0.128, 0.140, 0.122, 0.135, 0.131, 0.150, 0.128, 0.119, 0.144,
               0.133, 0.131, 0.139, 0.127, 0.146, 0.125, 0.138, 0.131, 0.142, 0.129]  # fmt: skip
NORMAL_STAB = [0.101, 0.110, 0.128, 0.099, 0.105, 0.131, 0.112, 0.101, 0.097, 0.118,
               0.104, 0.109, 0.101, 0.115, 0.122, 0.100, 0.108, 0.111, 0.103, 0.106]  # fmt: skip


@pytest.mark.parametrize("direction", list(Direction))
def test_mann_whitney_normal_approximation_matches_hand_computation(direction: Direction) -> None:
    expected = _normal_p(NORMAL_CAND, NORMAL_STAB, direction)
    assert mann_whitney_p(NORMAL_CAND, NORMAL_STAB, direction) == pytest.approx(expected, rel=1e-9)


def test_mann_whitney_direction_matters() -> None:
    assert mann_whitney_p(NORMAL_CAND, NORMAL_STAB, Direction.INCREASE) < 1e-5
    assert mann_whitney_p(NORMAL_CAND, NORMAL_STAB, Direction.DECREASE) > 0.99


def test_mann_whitney_identical_constants_is_one() -> None:
    assert mann_whitney_p([0.2] * 15, [0.2] * 15, Direction.INCREASE) == 1.0
    assert mann_whitney_p([0.2] * 15, [0.2] * 15, Direction.EITHER) == 1.0


def test_mann_whitney_refuses_empty() -> None:
    with pytest.raises(ValueError):
        mann_whitney_p([], [1.0], Direction.INCREASE)


@pytest.mark.parametrize(
    ("candidate", "stable", "change"),
    [
        (1.3, 1.0, 0.3),
        (0.7, 1.0, -0.3),
        (-1.5, -1.0, -0.5),
        (0.0, 0.0, 0.0),
        (0.1, 0.0, math.inf),
        (-0.1, 0.0, -math.inf),
    ],
)
def test_relative_change(candidate: float, stable: float, change: float) -> None:
    assert relative_change(candidate, stable) == pytest.approx(change)
