"""Rendering of the kubectl plugin: object + now -> text, no cluster."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from rollout_samples import NOW, ago, make_rollout

from modelrollout.cli import render

Make = Callable[..., dict[str, Any]]


@pytest.fixture
def rollout() -> Make:
    return make_rollout


def _lines_with(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


# ----------------------------------------------------------------------------- list


def test_list_shows_one_row_per_rollout_sorted(rollout: Make) -> None:
    other = rollout(phase="Succeeded", stage=None, weights={"stable": 100, "candidate": 0})
    other["metadata"].update(name="alpha", namespace="zz")
    text = render.render_list([other, rollout()], NOW)
    header, first, second = text.splitlines()
    assert header.split() == list(render.LIST_HEADERS)
    assert first.split() == [
        "ml",
        "fraud",
        "Progressing",
        "canary-5",
        "(2/4)",
        "5%",
        "2.3.1",
        "2.4.0",
        "5m",
    ]
    assert second.split()[:4] == ["zz", "alpha", "Succeeded", "-"]


def test_list_shows_mirror_and_replica_ratio(rollout: Make) -> None:
    shadow = rollout(
        stage={"index": 0, "name": "shadow", "weight": 0, "mirror": 100},
        weights={"stable": 100, "candidate": 0, "mirror": 100},
    )
    assert "0% mirror:100%" in render.render_list([shadow], NOW)
    ratio = rollout(weights={"stable": 95, "candidate": 5, "actualCandidate": 33.33})
    assert "5% (~33%)" in render.render_list([ratio], NOW)


def test_list_survives_an_unreadable_status(rollout: Make) -> None:
    broken = rollout(phase="Exploded")
    row = render.render_list([broken], NOW).splitlines()[1]
    assert "<unreadable status>" in row and row.startswith("ml")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=5, seconds=30), "5m30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(minutes=95), "95m"),
        (timedelta(hours=5, minutes=30), "5h30m"),
        (timedelta(hours=30), "30h"),
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(days=30), "30d"),
        (timedelta(days=800), "2y"),
        (timedelta(seconds=-3), "0s"),
    ],
)
def test_human_duration_matches_kubectl(delta: timedelta, text: str) -> None:
    assert render.human_duration(delta) == text


# ----------------------------------------------------------------------------- status


def test_status_shows_stage_time_left_traffic_versions(rollout: Make) -> None:
    text = render.render_status(rollout(), NOW)
    assert "Stage:       canary-5 (2/4), weight 5%, mirror 0%" in text
    assert "Time left:   6m00s of 10m00s" in text  # readyAt 4m ago + 10m - now
    assert "stable 95%   candidate 5%   mirror 0%" in text
    assert "fraud 2.3.1   s3://models/fraud/2.3.1" in text
    assert "s3://models/fraud/2.4.0   sha256:4f1c" in text


def test_status_shows_the_message(rollout: Make) -> None:
    text = render.render_status(rollout(message="  waiting for 3 more analysis runs "), NOW)
    assert "Message:     waiting for 3 more analysis runs\n" in text
    assert "Message" not in render.render_status(rollout(message=" "), NOW)


def test_status_shows_each_metric_against_its_bound(rollout: Make) -> None:
    text = render.render_status(rollout(), NOW)
    (error_rate,) = _lines_with(text, "error-rate")
    assert error_rate.split() == ["error-rate", "0.0042", "<=", "0.01", "Successful", "30s"]
    (compare,) = _lines_with(text, "latency-vs-stable")
    assert "0.21 (stable 0.2, p=0.31)" in compare
    assert "Inconclusive" in compare and "too few samples" in compare


def test_status_time_left_freezes_while_paused(rollout: Make) -> None:
    paused = rollout(phase="Paused", pausedAt=ago(minutes=2), pausedBy="command")
    paused["status"]["history"] = [
        {
            "time": ago(minutes=2),
            "event": "Paused",
            "reason": "looking at a dashboard",
            "actor": "alice",
            "seq": 1,
        },
    ]
    # ready 4m ago, paused 2m ago: 2m elapsed, whatever "now" is.
    for later in (NOW, NOW + timedelta(hours=3)):
        text = render.render_status(paused, later)
        assert "Time left:   8m00s of 10m00s (paused: the stage clock is stopped)" in text
    assert (
        "Paused:      pause command by alice since 2024-05-01T11:58:00Z: looking at a dashboard"
        in text
    )


def test_status_paused_by_spec(rollout: Make) -> None:
    text = render.render_status(
        rollout(phase="Paused", pausedAt=ago(minutes=1), pausedBy="spec"), NOW
    )
    assert "Paused:      spec.paused is true since 2024-05-01T11:59:00Z" in text


def test_status_before_the_candidate_is_ready_and_on_the_last_stage(rollout: Make) -> None:
    waiting = rollout(
        stage={"index": 1, "name": "canary-5", "weight": 5, "startedAt": ago(minutes=1)}
    )
    assert "clock starts when the candidate is ready" in render.render_status(waiting, NOW)
    last = rollout(stage={"index": 3, "name": "full", "weight": 100, "readyAt": ago(minutes=1)})
    assert "no fixed duration: promotes once the analysis passes" in render.render_status(last, NOW)


def test_status_explains_a_rollback_with_the_failing_metric(rollout: Make) -> None:
    rolled = rollout(
        phase="RolledBack",
        rollbackReason="AnalysisFailed: error-rate 0.05 > 0.01",
        history=[
            {
                "time": ago(minutes=1),
                "event": "RolledBack",
                "from": "canary-5",
                "reason": "AnalysisFailed: error-rate",
                "seq": 7,
                "metrics": [
                    {"name": "error-rate", "verdict": "Failed", "value": 0.05, "bound": "<= 0.01"},
                    {"name": "p99", "verdict": "Successful", "value": 0.1, "bound": "<= 0.3"},
                ],
            },
        ],
    )
    text = render.render_status(rolled, NOW)
    assert "Rolled back: AnalysisFailed: error-rate 0.05 > 0.01" in text
    assert "decided by modelrollout-operator at 2024-05-01T11:59:00Z (RolledBack)" in text
    assert "error-rate: 0.05 vs <= 0.01 -> Failed" in text
    assert "p99: 0.1" not in text  # only what decided it
    assert "Time left:   -" in text


def test_status_shows_replica_ratio_and_conditions(rollout: Make) -> None:
    text = render.render_status(
        rollout(weights={"stable": 75, "candidate": 25, "actualCandidate": 33.33}), NOW
    )
    assert "(replica routing: actual candidate share 33.3%)" in text
    (ready,) = _lines_with(text, "Ready ")
    assert ready.split() == ["Ready", "False", "Progressing", "5m", "stage", "canary-5"]


def test_status_of_a_brand_new_rollout(rollout: Make) -> None:
    fresh = rollout()
    fresh["status"] = {}
    text = render.render_status(fresh, NOW)
    assert "Phase:       Idle" in text and "Stage:       -" in text
    assert "Analysis:    no run yet in this stage" in text
    assert "Message" not in text
    assert "Conditions:  -" in text


def test_unreadable_status_is_a_clear_error(rollout: Make) -> None:
    with pytest.raises(
        render.RenderError, match=r"status of modelrollout ml/fraud cannot be read: phase"
    ):
        render.render_status(rollout(phase="Exploded"), NOW)


def test_default_stages_apply_when_spec_has_none(rollout: Make) -> None:
    obj = rollout(stage={"index": 2, "name": "canary-25", "weight": 25, "readyAt": ago(minutes=5)})
    del obj["spec"]["stages"]
    assert [s.name for s in render.read_stages(obj)] == ["shadow", "canary-5", "canary-25", "full"]
    assert "15m00s of 20m00s" in render.render_status(obj, NOW)


# ----------------------------------------------------------------------------- history


HISTORY = [
    {
        "time": "2024-05-01T11:50:00.000000Z",
        "event": "RolloutStarted",
        "reason": "spec.model changed",
        "model": {"name": "fraud", "version": "2.4.0", "uri": "s3://x"},
        "seq": 1,
        "hash": "a" * 64,
    },
    {
        "time": "2024-05-01T11:55:00.000000Z",
        "event": "StageEntered",
        "from": "shadow",
        "to": "canary-5",
        "reason": "analysis passed",
        "actor": "alice",
        "seq": 2,
        "prevHash": "a" * 64,
        "hash": "b" * 64,
    },
]


def test_history_table(rollout: Make) -> None:
    text = render.render_history(rollout(history=HISTORY))
    header, first, second = text.splitlines()
    assert header.split() == [
        "SEQ",
        "TIME",
        "EVENT",
        "FROM",
        "TO",
        "VERSION",
        "ACTOR",
        "HASH",
        "REASON",
    ]
    assert first.split()[:8] == [
        "1",
        "2024-05-01T11:50:00Z",
        "RolloutStarted",
        "-",
        "-",
        "2.4.0",
        "modelrollout-operator",
        "a" * 12,
    ]
    assert second.split()[2:7] == ["StageEntered", "shadow", "canary-5", "-", "alice"]
    assert second.endswith("analysis passed")


def test_history_json_is_the_stored_entries(rollout: Make) -> None:
    assert json.loads(render.render_history(rollout(history=HISTORY), "json")) == HISTORY


def test_history_empty(rollout: Make) -> None:
    assert render.render_history(rollout()) == "No history yet."


# ----------------------------------------------------------------------------- watch


def test_watch_progress_per_stage(rollout: Make) -> None:
    progress = render.stage_progress(rollout(), NOW)
    assert [(p.name, p.state) for p in progress] == [
        ("shadow", "done"),
        ("canary-5", "current"),
        ("canary-25", "pending"),
        ("full", "pending"),
    ]
    assert progress[1].fraction == pytest.approx(0.4)
    assert "40% of 10m00s, 6m00s left" in progress[1].note
    frame = render.render_watch(rollout(), NOW)
    (bar,) = _lines_with(frame, "canary-5 ")
    assert "[" + "#" * 12 + "-" * 18 + "]" in bar


def test_watch_terminal_states(rollout: Make) -> None:
    done = render.stage_progress(rollout(phase="Succeeded"), NOW)
    assert {p.state for p in done} == {"done"}
    rolled = render.stage_progress(rollout(phase="RolledBack"), NOW)
    assert [p.state for p in rolled] == ["done", "rolled-back", "skipped", "skipped"]
    assert "ROLLED BACK" in render.render_watch(rollout(phase="RolledBack"), NOW)


def test_watch_paused_stage_says_so(rollout: Make) -> None:
    paused = render.stage_progress(
        rollout(phase="Paused", pausedAt=ago(minutes=2)), NOW + timedelta(hours=1)
    )
    assert paused[1].fraction == pytest.approx(0.2)
    assert paused[1].note.endswith("(paused)")


def test_settled_only_in_a_terminal_phase_for_the_current_generation(rollout: Make) -> None:
    assert not render.is_settled(rollout())
    assert render.is_settled(rollout(phase="Succeeded"))
    assert render.is_settled(rollout(phase="RolledBack"))
    # A new version was applied (generation 3) but the operator has not seen it yet.
    assert not render.is_settled(rollout(phase="Succeeded", observedGeneration=2))
