"""The bench's verdict on issue 11's targets, and the table that shows it."""

from __future__ import annotations

from bench.run import Config, markdown, verdicts

RESULT = {
    "rollouts": 1000,
    "outcome": {"RolledBack": 100, "Succeeded": 900},
    "transition_lag_p50_s": 0.01,
    "transition_lag_p99_s": 0.67,
    "route_lag_p50_s": 1.3,
    "route_lag_p99_s": 6.5,
    "breach_to_rollback_p50_s": 22.9,
    "breach_to_rollback_p99_s": 32.5,
    "operator_rss_mib_peak": 266.2,
    "operator_cpu_seconds_per_rollout_hour": 1.3,
    "apiserver_writes_per_rollout_stage": 2.42,
    "apiserver_status_and_route_writes_per_rollout_stage": 1.79,
    "apiserver_writes_all_per_rollout_stage": 4.0,
    "prometheus_queries_per_rollout_interval": 0.81,
}


def test_the_rollback_limit_is_the_analysis_interval_plus_two_seconds() -> None:
    assert verdicts(Config(interval_s=30), RESULT)["breach to rollback p99"] is False
    assert verdicts(Config(interval_s=31), RESULT)["breach to rollback p99"] is True


def test_writes_are_judged_with_and_without_the_once_per_rollout_writes() -> None:
    found = verdicts(Config(interval_s=30), RESULT)
    assert found["apiserver writes per stage change"] is False
    assert found["apiserver writes per stage change, status and route only"] is True
    assert found["transition lag p99"] is True
    assert found["operator peak RSS"] is True


def test_a_figure_the_round_could_not_measure_is_neither_met_nor_missed() -> None:
    partial = {**RESULT, "breach_to_rollback_p99_s": None}
    assert verdicts(Config(), partial)["breach to rollback p99"] is None
    meta = {"generated_at": "t", "machine": {"cpus": 2, "python": "3.11"}, "lab": "own"}
    text = markdown(Config(), [partial], meta)
    assert "- breach to rollback p99 <= 7s: N=1000: n/a" in text
    assert "- apiserver writes per stage change, status and route only <= 2: N=1000: met" in text
    assert "| 1.79 / 2.42 (4.00) |" in text
