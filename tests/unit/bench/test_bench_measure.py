"""The benchmark's figures (bench.measure) and its synthetic exporter's counters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.exporter import ServiceRate, SyntheticRequests
from bench.measure import (
    PROMOTED,
    RouteView,
    StagePlan,
    analysed_seconds,
    expected_routes,
    first_seen,
    operator_writes,
    percentiles,
    route_view,
    stage_changes,
    status_write_cause,
    transitions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLAN = [
    StagePlan("canary-10", 10, 10, checked=True),
    StagePlan("canary-50", 50, 10, checked=True),
    StagePlan("full", 100, 0, checked=True),
]


def entry(
    at: float, event: str, to: str | None = None, source: str | None = None
) -> dict[str, Any]:
    stamp = (T0 + timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    found: dict[str, Any] = {"time": stamp, "event": event}
    if to:
        found["to"] = to
    if source:
        found["from"] = source
    return found


def promoted_history() -> list[dict[str, Any]]:
    return [
        entry(0, "Initialized"),
        entry(50, "RolloutStarted"),
        entry(50, "StageEntered", "canary-10"),
        entry(100, "CandidateReady", "canary-10"),  # readyAt of stage 0
        entry(110.4, "StageEntered", "canary-50", "canary-10"),  # due 110 -> 0.4 late
        entry(120.9, "StageEntered", "full", "canary-50"),  # due 120.4 -> 0.5 late
        entry(126.0, "Promoted", source="full"),  # due 120.9 + one interval -> 0.1 late
    ]


@pytest.mark.parametrize(
    ("duration", "checked", "expected"),
    [(10, True, 10), (7, True, 10), (0, True, 5), (7, False, 7), (0, False, 0), (11, True, 15)],
)
def test_a_stage_may_be_left_after_its_duration_and_a_whole_analysis_interval(
    duration: float, checked: bool, expected: float
) -> None:
    assert StagePlan("s", 10, duration, checked).earliest_exit(5) == expected


def test_lag_is_measured_from_when_each_stage_was_due_to_when_the_trail_records_the_move() -> None:
    found = transitions("ns/m", promoted_history(), PLAN, interval_s=5)
    assert [(t.from_stage, t.to) for t in found] == [
        ("canary-10", "canary-50"),
        ("canary-50", "full"),
        ("full", PROMOTED),
    ]
    assert [round(t.lag_s, 3) for t in found] == [0.4, 0.5, 0.1]


def test_only_the_latest_rollout_counts_and_a_stage_that_lost_its_traffic_is_due_anew() -> None:
    old = promoted_history()
    history = [
        *old,
        entry(200, "RolloutStarted"),
        entry(200, "StageEntered", "canary-10"),
        entry(205, "CandidateReady", "canary-10"),
        entry(207, "CandidateUnready", "canary-10"),  # waiting again: no readyAt
        entry(230, "CandidateReady", "canary-10"),
        entry(241, "StageEntered", "canary-50", "canary-10"),
        entry(247, "RolledBack", source="canary-50"),
    ]
    found = transitions("ns/m", history, PLAN, interval_s=5)
    assert [(t.to, round(t.lag_s, 3)) for t in found] == [("canary-50", 1.0)]
    assert stage_changes(history) == 6  # StageEntered x2, CandidateReady x2, -Unready, RolledBack
    # traffic from 205 to 207, from 230 to 241 and from 241 to the rollback at 247
    end = (T0 + timedelta(seconds=300)).timestamp()
    assert analysed_seconds(history, end) == pytest.approx(2 + 11 + 6)


def test_the_route_log_tells_when_a_weight_was_first_served() -> None:
    body = {
        "spec": {
            "rules": [
                {
                    "backendRefs": [{"name": "m-a", "weight": 90}, {"name": "m-b", "weight": 10}],
                    "filters": [
                        {"type": "RequestHeaderModifier"},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m-b"}}},
                    ],
                }
            ]
        }
    }
    view = route_view(12.0, body)
    assert view == RouteView(12.0, (("m-a", 90), ("m-b", 10)), "m-b")
    assert route_view(1.0, {"spec": {"rules": []}}) is None
    log = [
        RouteView(1.0, (("m-a", 100),), None),
        RouteView(5.0, (("m-a", 90), ("m-b", 10)), None),
        RouteView(9.0, (("m-a", 100),), None),
    ]
    wanted = expected_routes(PLAN, "m-a", "m-b")
    assert wanted[PROMOTED] == {"m-b": 100}
    assert first_seen(log, wanted["canary-10"], after=0) == 5.0
    assert first_seen(log, {"m-a": 100}, after=2) == 9.0
    assert first_seen(log, wanted["canary-50"], after=0) is None


def test_operator_writes_leave_out_the_benchs_own_and_the_controller_managers() -> None:
    before = Counter({("PATCH", "modelrollout.dev", "modelrollouts", "status"): 10})
    after = Counter(
        {
            ("PATCH", "modelrollout.dev", "modelrollouts", "status"): 40,
            ("PATCH", "modelrollout.dev", "modelrollouts", ""): 7,
            ("PATCH", "gateway.networking.k8s.io", "httproutes", ""): 12,
            ("PATCH", "apps", "deployments", ""): 3,
            ("PUT", "apps", "deployments", ""): 50,  # the deployment controller
            ("PUT", "apps", "deployments", "status"): 80,
            ("POST", "", "pods", ""): 9,
        }
    )
    bench = Counter({("PATCH", "modelrollout.dev", "modelrollouts", ""): 5})
    assert operator_writes(before, after, bench, events=4) == {
        "deployments": 3,
        "events": 4,
        "rollout object": 2,
        "rollout status": 30,
        "routes": 12,
        "total": 51,
    }


def test_percentiles_interpolate_and_say_none_without_values() -> None:
    assert percentiles([]) == {50: None, 99: None}
    assert percentiles([1.0, 2.0, 3.0, 4.0]) == {50: 2.5, 99: 3.97}


def test_the_exporter_counts_requests_by_rate_and_keeps_counts_when_the_rate_changes() -> None:
    now = [100.0]
    requests = SyntheticRequests(clock=lambda: now[0])
    assert requests.set([ServiceRate(namespace="ns", service="m-b", rps=10)]) == 1

    def counts() -> dict[str, float]:
        family = next(iter(requests.collect()))
        return {s.labels["code"]: s.value for s in family.samples if s.labels["service"] == "m-b"}

    now[0] = 110.0
    assert counts() == {"200": pytest.approx(100.0), "500": pytest.approx(0.0)}
    requests.set([ServiceRate.model_validate({"namespace": "ns", "service": "m-b", "rps": 10,
                                              "errorRate": 0.05})])  # fmt: skip
    now[0] = 120.0
    assert counts() == {"200": pytest.approx(195.0), "500": pytest.approx(5.0)}
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ServiceRate.model_validate({"namespace": "ns", "service": "x", "errorRate": 5})


def _status(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Progressing",
        "candidateVersion": "2.0.0",
        "weights": {"stable": 90, "candidate": 10},
        "stage": {"name": "canary-10", "readyAt": "2026-01-01T00:00:05Z"},
        "analysis": {"runs": 1, "lastRunAt": "2026-01-01T00:00:10Z"},
        "history": [{"seq": 1, "event": "StageEntered"}],
    }
    base.update(extra)
    return base


def test_status_writes_are_classified_by_what_they_record() -> None:
    before = _status()
    assert status_write_cause(before, _status()) is None  # a spec or metadata write
    assert status_write_cause(before, _status(stage={"name": "canary-50"})) == "stage"
    assert status_write_cause(before, _status(phase="RolledBack")) == "stage"
    assert status_write_cause(before, _status(weights={"stable": 50, "candidate": 50})) == "stage"
    ready = _status(
        history=[{"seq": 1, "event": "StageEntered"}, {"seq": 2, "event": "CandidateReady"}]
    )
    assert status_write_cause(before, ready) == "stage"
    assert status_write_cause(before, _status(analysis={"runs": 2})) == "analysis"
    noted = _status(history=[{"seq": 1, "event": "StageEntered"}, {"seq": 2, "event": "Command"}])
    assert status_write_cause(before, noted) == "other"
    assert status_write_cause(None, _status()) == "stage"  # the first status ever
