"""Pure verdict of the built-in ``traffic-split`` check: did the split a stage asks for reach
the candidate? From the requests each side's model servers counted over the window.

What is expected, for a stage with weight ``w`` and mirror ``m`` (percent):

- a shadow stage (``w == 0``, ``m > 0``): the candidate answers a copy of ``m``% of what the
  stable answers, so the ratio candidate / stable is expected to be ``m / 100``;
- otherwise the candidate's share of all requests counted, ``w`` of live traffic plus the
  mirrored copies of the stable's part: ``(w + (100 - w) m / 100) / (that + 100 - w)``.
  Under replica-ratio routing ``w`` is the share of ready pods (the split it can express).

The observed value may be off by ``tolerance`` times the expected one, and never less than
four binomial standard deviations at the count seen (sampling noise is no misroute). Too few
requests to tell is Successful: it is no evidence of a misroute, and stages are timed.
"""

from __future__ import annotations

import math

from modelrollout.api.models import TrafficCheckSpec, Verdict
from modelrollout.metrics.base import InstantOutcome, NoData, ProviderError
from modelrollout.metrics.verdicts import Judgement


def expected_share(weight: float, mirror: float) -> tuple[float, bool]:
    """(expected value, whether it is the shadow ratio candidate / stable)."""
    if weight == 0 and mirror:
        return mirror / 100, True
    candidate = weight + (100 - weight) * mirror / 100
    return candidate / (candidate + 100 - weight), False


def count(outcome: InstantOutcome) -> float | ProviderError:
    """Requests counted by one side: no series is none counted (a side that got nothing)."""
    if isinstance(outcome, ProviderError):
        return outcome
    if isinstance(outcome, NoData) or not math.isfinite(outcome.value):
        return 0.0
    return max(outcome.value, 0.0)


def judge_traffic(
    candidate: float, stable: float, weight: float, mirror: float, spec: TrafficCheckSpec
) -> Judgement:
    expected, shadow = expected_share(weight, mirror)
    seen_n = stable if shadow else candidate + stable
    seen = candidate / seen_n if seen_n else 0.0
    what = "mirrored share of the stable's requests" if shadow else "share of requests"
    if seen_n < spec.min_requests:
        return Judgement(
            Verdict.SUCCESSFUL,
            f"too few requests to judge the split ({seen_n:.0f} of minRequests "
            f"{spec.min_requests}); expected {what} {_pct(expected)}",
            value=seen if seen_n else None,
        )
    p = min(expected, 1.0)
    band = max(spec.tolerance * expected, 4 * math.sqrt(p * (1 - p) / seen_n))
    if abs(seen - expected) > band:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"traffic split not observed: expected {_pct(expected)}, saw {_pct(seen)} "
            f"({what}, {seen_n:.0f} requests)",
            value=seen,
        )
    return Judgement(
        Verdict.SUCCESSFUL,
        f"observed {_pct(seen)} ({what}, {seen_n:.0f} requests), expected {_pct(expected)}",
        value=seen,
    )


def traffic_bound(weight: float, mirror: float, spec: TrafficCheckSpec) -> str:
    expected, shadow = expected_share(weight, mirror)
    what = "candidate/stable" if shadow else "candidate share"
    return f"{what} {_pct(expected)} ± {_pct(spec.tolerance * expected)}"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"
