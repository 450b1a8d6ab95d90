"""The traffic-split verdict: the split a stage asks for against the requests each side
counted (metrics/traffic.py)."""

from __future__ import annotations

import pytest

from modelrollout.api.models import TrafficCheckSpec, Verdict
from modelrollout.metrics.base import NoData, ProviderError, Value
from modelrollout.metrics.traffic import count, expected_share, judge_traffic

SPEC = TrafficCheckSpec()


@pytest.mark.parametrize(
    ("weight", "mirror", "expected", "shadow"),
    [
        (5, 0, 0.05, False),
        (25, 0, 0.25, False),
        (100, 0, 1.0, False),
        (0, 100, 1.0, True),  # shadow: the candidate answers a copy of every stable request
        (0, 50, 0.5, True),
        (10, 100, (10 + 90) / (100 + 90), False),  # weight and mirror together
    ],
)
def test_what_each_stage_expects(weight: int, mirror: int, expected: float, shadow: bool) -> None:
    got, is_shadow = expected_share(weight, mirror)
    assert got == pytest.approx(expected) and is_shadow is shadow


@pytest.mark.parametrize(
    ("candidate", "stable", "weight", "mirror", "verdict", "said"),
    [
        # the example: 5% asked, 0.4% reached the candidate
        (4, 996, 5, 0, Verdict.INCONCLUSIVE, "traffic split not observed: expected 5%, saw 0.4%"),
        (0, 2000, 25, 0, Verdict.INCONCLUSIVE, "expected 25%, saw 0%"),
        (48, 952, 5, 0, Verdict.SUCCESSFUL, "observed 4.8%"),
        (260, 740, 25, 0, Verdict.SUCCESSFUL, "observed 26%"),
        (1000, 0, 100, 0, Verdict.SUCCESSFUL, "observed 100%"),
        # shadow: copies counted against the originals
        (990, 1000, 0, 100, Verdict.SUCCESSFUL, "mirrored share"),
        (0, 1000, 0, 100, Verdict.INCONCLUSIVE, "expected 100%, saw 0%"),
        # too few to tell is no evidence of a misroute
        (0, 37, 5, 0, Verdict.SUCCESSFUL, "too few requests to judge the split (37 of"),
        # sampling noise at a small count is no misroute: 4 sd at n=250 and 5% is 5.5 points
        (1, 249, 5, 0, Verdict.SUCCESSFUL, "observed 0.4%"),
    ],
)
def test_the_split_observed_against_the_split_asked(
    candidate: float, stable: float, weight: int, mirror: int, verdict: Verdict, said: str
) -> None:
    judged = judge_traffic(candidate, stable, weight, mirror, SPEC)
    assert judged.verdict is verdict, judged.message
    assert said in judged.message


def test_tolerance_and_minimum_are_the_rollouts() -> None:
    strict = TrafficCheckSpec(tolerance=0.1, min_requests=10_000)
    assert judge_traffic(70, 930, 5, 0, strict).verdict is Verdict.SUCCESSFUL  # too few
    strict = TrafficCheckSpec(tolerance=0.1, min_requests=100)
    assert judge_traffic(700, 9300, 5, 0, strict).verdict is Verdict.INCONCLUSIVE  # 7% vs 5±0.5


def test_counts_from_the_provider() -> None:
    assert count(Value(12.0)) == 12.0
    assert count(NoData("empty")) == 0.0  # a side no request reached has no series
    assert count(Value(float("nan"))) == 0.0
    error = ProviderError("down")
    assert count(error) is error
