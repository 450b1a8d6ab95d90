"""The bench's reading of histograms between two scrapes of the operator's metrics."""

from __future__ import annotations

import pytest

from bench.probes import Sample, mean_between, quantile_between

H = "modelrollout_reconcile_queue_seconds"


def snapshot(buckets: dict[str, float], total_s: float) -> Sample:
    samples: Sample = {(f"{H}_bucket", (("le", le),)): v for le, v in buckets.items()}
    samples[(f"{H}_count", ())] = buckets["+Inf"]
    samples[(f"{H}_sum", ())] = total_s
    return samples


BEFORE = snapshot({"0.1": 10, "1.0": 10, "10.0": 10, "+Inf": 10}, 0.5)
# Between the snapshots: 90 waits under 0.1 s, 9 between 1 and 10 s, 1 over 10 s.
AFTER = snapshot({"0.1": 100, "1.0": 100, "10.0": 109, "+Inf": 110}, 60.5)


def test_only_the_observations_between_the_two_snapshots_count() -> None:
    assert mean_between(BEFORE, AFTER, H) == pytest.approx(0.6)
    assert quantile_between(BEFORE, AFTER, H, 0.5) == pytest.approx(0.1 * 50 / 90)


def test_a_quantile_is_interpolated_within_its_bucket_like_histogram_quantile() -> None:
    # rank 95 of 100: the 5th of the 9 observations in (1, 10]
    assert quantile_between(BEFORE, AFTER, H, 0.95) == pytest.approx(1 + 9 * 5 / 9)


def test_beyond_the_last_finite_bucket_the_answer_is_that_bound() -> None:
    assert quantile_between(BEFORE, AFTER, H, 0.999) == 10.0


def test_no_observation_no_quantile() -> None:
    assert quantile_between(BEFORE, BEFORE, H, 0.99) is None
    assert quantile_between({}, {}, H, 0.99) is None
