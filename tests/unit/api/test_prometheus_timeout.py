"""The Prometheus query timeout: explicit values must fit in the interval; the default adapts."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout.api.models import ModelRolloutSpec, PrometheusSpec
from modelrollout.api.validation import validate


@pytest.mark.parametrize(
    ("interval", "expected"),
    [("1m", "5s"), ("10s", "5s"), ("7s", "3.5s"), ("2s", "1s"), ("1s", "0.5s")],
)
def test_default_timeout_is_5s_capped_at_half_the_interval(interval: str, expected: str) -> None:
    assert PrometheusSpec().effective_timeout(interval) == expected


def test_an_explicit_timeout_is_used_as_set() -> None:
    assert PrometheusSpec(timeout="2s").effective_timeout("1m") == "2s"


def _spec(analysis: dict[str, Any]) -> ModelRolloutSpec:
    return ModelRolloutSpec.model_validate(
        {
            "model": {"name": "m", "version": "1", "uri": "s3://m/1"},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
            "trafficRouting": {"gatewayAPI": {"httpRoute": "m"}},
            "analysis": analysis,
        }
    )


def test_short_interval_without_timeout_is_valid() -> None:
    assert [str(p) for p in validate(_spec({"interval": "2s"}))] == []


def test_explicit_timeout_not_shorter_than_interval_is_refused() -> None:
    problems = [
        str(p) for p in validate(_spec({"interval": "2s", "prometheus": {"timeout": "2s"}}))
    ]
    assert problems == [
        "spec.analysis.prometheus.timeout: must be shorter than spec.analysis.interval (2s; got 2s)"
    ]
