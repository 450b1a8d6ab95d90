"""The benchmark's figures, computed from what was recorded. Pure: no I/O, no clock.

Transition lag
    For every stage change of a rollout: *due* is when the engine may move on, *entered* is the
    ``time`` of the audit entry that records the move (``StageEntered`` into the next stage, or
    ``Promoted`` from the last one). A stage may be left once its ``duration`` has elapsed since
    its ``readyAt`` and, when checks apply, an analysis run at or after that passed; on a
    schedule without any lag the runs fall at ``readyAt + k x interval``, so
    ``due = readyAt + max(duration, interval x ceil(duration / interval))`` for a checked stage
    and ``readyAt + duration`` otherwise. ``readyAt`` comes from the history as well: the
    ``CandidateReady`` entry of the stage when there is one (stage 0, or a stage that lost its
    traffic), else its ``StageEntered`` entry (later stages are entered with traffic at once).
    A late analysis run is the operator's lag too, so it is part of the figure.

Route lag
    The same *due*, up to the moment the bench's own watch saw the route object carry the new
    stage's weights: what a user's traffic actually experiences.

Breach to rollback
    From the first Prometheus answer in which the synthetic breach is visible (the error rate
    above the threshold) to the first route event that sends 100% to the stable Service again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from bench.probes import WriteKey

PROMOTED = "(promoted)"

STAGE_CHANGES = frozenset(
    {
        "StageEntered",
        "CandidateReady",
        "CandidateUnready",
        "Promoted",
        "RolledBack",
        "Failed",
        "Superseded",
        "Reverted",
    }
)
"""Audit events that change what the rollout routes (the engine's transitions): each one is a
stage change."""


@dataclass(frozen=True)
class StagePlan:
    """One stage as the bench configured it."""

    name: str
    weight: int
    duration_s: float
    checked: bool

    def earliest_exit(self, interval_s: float) -> float:
        """Seconds after readyAt at which the stage may be left on a lag-free schedule."""
        if not self.checked:
            return self.duration_s
        runs = max(1, math.ceil(self.duration_s / interval_s - 1e-9))
        return max(self.duration_s, runs * interval_s)


@dataclass(frozen=True)
class Transition:
    rollout: str
    from_stage: str
    to: str  # the next stage's name, or PROMOTED
    due: float  # epoch seconds
    entered: float

    @property
    def lag_s(self) -> float:
        return self.entered - self.due


def epoch(value: str | datetime) -> float:
    """An RFC 3339 timestamp (as the status writes it) in epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.timestamp()


def current_rollout(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries of the latest rollout: from the last ``RolloutStarted`` on (all if none)."""
    starts = [i for i, entry in enumerate(history) if entry.get("event") == "RolloutStarted"]
    return list(history[starts[-1] :] if starts else history)


def transitions(
    rollout: str,
    history: Sequence[Mapping[str, Any]],
    plan: Sequence[StagePlan],
    interval_s: float,
) -> list[Transition]:
    """Every stage change of the latest rollout, with when it was due and when it happened."""
    stages = {stage.name: stage for stage in plan}
    ready_at: dict[str, float] = {}
    found: list[Transition] = []

    def transition(source: str | None, to: str, at: float) -> None:
        stage = stages.get(source or "")
        if stage is None or source not in ready_at:
            return
        due = ready_at[source] + stage.earliest_exit(interval_s)
        found.append(Transition(rollout, stage.name, to, due, at))

    for entry in current_rollout(history):
        event, at = entry.get("event"), epoch(entry["time"])
        to, source = entry.get("to"), entry.get("from")
        if event == "StageEntered":
            if source is not None:
                transition(source, str(to), at)
                ready_at[str(to)] = at  # later stages are entered with their traffic set
            else:
                ready_at.pop(str(to), None)  # stage 0 waits for the candidate first
        elif event == "CandidateReady" and to:
            ready_at[str(to)] = at
        elif event == "Promoted":
            transition(source, PROMOTED, at)
        elif to:  # the stage was restarted (e.g. the candidate lost its ready replicas)
            ready_at.pop(str(to), None)
    return found


def stage_changes(history: Sequence[Mapping[str, Any]]) -> int:
    """How many times the latest rollout changed what it routes (see :data:`STAGE_CHANGES`)."""
    return sum(1 for entry in current_rollout(history) if entry.get("event") in STAGE_CHANGES)


def analysed_seconds(history: Sequence[Mapping[str, Any]], end: float) -> float:
    """Seconds during which the latest rollout's candidate had traffic (analysis was due)."""
    total = 0.0
    since: float | None = None
    for entry in current_rollout(history):
        event, at = entry.get("event"), epoch(entry["time"])
        if since is not None and event in STAGE_CHANGES:
            total += at - since
            since = None
        if event == "CandidateReady" or (event == "StageEntered" and entry.get("from")):
            since = at
    if since is not None:
        total += max(0.0, end - since)
    return total


@dataclass(frozen=True)
class RouteView:
    """One version of a route as the bench's watch received it."""

    seen: float  # epoch seconds
    weights: tuple[tuple[str, int], ...]  # the managed rule's backends, in order
    mirror: str | None  # the Service our RequestMirror filter targets, if any

    def serves(self, wanted: Mapping[str, int], mirror: str | None = None) -> bool:
        return dict(self.weights) == dict(wanted) and self.mirror == mirror


def route_view(seen: float, body: Mapping[str, Any], rule_index: int = 0) -> RouteView | None:
    """The managed rule of an HTTPRoute body (None when it has no such rule)."""
    rules = (body.get("spec") or {}).get("rules") or []
    if len(rules) <= rule_index:
        return None
    rule = rules[rule_index]
    weights = tuple(
        (str(ref.get("name")), int(1 if ref.get("weight") is None else ref["weight"]))
        for ref in rule.get("backendRefs") or []
    )
    mirrors = [
        ((f.get("requestMirror") or {}).get("backendRef") or {}).get("name")
        for f in rule.get("filters") or []
        if f.get("type") == "RequestMirror"
    ]
    return RouteView(seen, weights, str(mirrors[0]) if mirrors else None)


def first_seen(
    log: Iterable[RouteView], wanted: Mapping[str, int], after: float, mirror: str | None = None
) -> float | None:
    """When the route was first seen serving ``wanted`` at or after ``after``."""
    for view in log:
        if view.seen >= after and view.serves(wanted, mirror):
            return view.seen
    return None


def expected_routes(
    plan: Sequence[StagePlan], stable: str, candidate: str
) -> dict[str, dict[str, int]]:
    """What the managed rule holds in each stage, and once promoted (without mirroring)."""
    routes = {s.name: {stable: 100 - s.weight, candidate: s.weight} for s in plan}
    routes[PROMOTED] = {candidate: 100}
    return routes


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 99)) -> dict[int, float | None]:
    """``{q: percentile}`` (linear interpolation, numpy's default); None for no values."""
    if not values:
        return {q: None for q in qs}
    found = np.percentile(np.asarray(values, dtype=float), list(qs))
    return {q: round(float(v), 3) for q, v in zip(qs, found, strict=True)}


# --------------------------------------------------------------------------- writes

STAGE_FIELDS = ("phase", "stableVersion", "candidateVersion", "stableSlot", "weights")
"""Status fields a stage change moves (besides ``stage`` and new audit entries)."""


def status_write_cause(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str | None:
    """Why the operator wrote a rollout's status, from two consecutive versions of it: ``stage``
    (it records a stage change: phase, stage, weights or a stage-changing audit entry moved),
    ``analysis`` (only an analysis run's results and counters), ``other``; None when the status
    did not change (a spec or metadata write)."""
    old, new = dict(before or {}), dict(after)
    if old == new:
        return None
    seqs = {e.get("seq") for e in old.get("history") or []}
    added = [e for e in new.get("history") or [] if e.get("seq") not in seqs]
    old_stage, new_stage = old.get("stage") or {}, new.get("stage") or {}
    if (
        any(e.get("event") in STAGE_CHANGES for e in added)
        or any(old.get(f) != new.get(f) for f in STAGE_FIELDS)
        or (old_stage.get("name"), old_stage.get("readyAt"))
        != (new_stage.get("name"), new_stage.get("readyAt"))
    ):
        return "stage"
    if old.get("analysis") != new.get("analysis"):
        return "analysis"
    return "other"


OPERATOR_WRITES: Mapping[tuple[str, str, str], tuple[str, frozenset[str]]] = {
    ("modelrollout.dev", "modelrollouts", "status"): ("rollout status", frozenset({"PATCH"})),
    ("modelrollout.dev", "modelrollouts", ""): ("rollout object", frozenset({"PATCH", "PUT"})),
    ("gateway.networking.k8s.io", "httproutes", ""): ("routes", frozenset({"PATCH", "PUT"})),
    ("apps", "deployments", ""): ("deployments", frozenset({"POST", "PATCH", "DELETE"})),
    ("", "services", ""): ("services", frozenset({"POST", "PATCH", "DELETE"})),
}
"""Which counted writes are the operator's, by (group, resource, subresource) and verb.

The controller-manager also writes Deployments, but with PUT (its revision annotation) and on
the status subresource; it never PATCHes them, so Deployment PATCH/POST are the operator's.
Events are counted apart: other components post Events too."""


def operator_writes(
    before: Mapping[WriteKey, int],
    after: Mapping[WriteKey, int],
    bench_own: Mapping[WriteKey, int],
    events: int,
) -> dict[str, int]:
    """The operator's writes between two apiserver snapshots, by kind (plus ``total``).

    ``bench_own`` are the bench's own writes in the window (its version patches), subtracted;
    ``events`` is the number of Events about the rollouts created in the window.
    """
    counted: Counter[str] = Counter()
    for key, value in after.items():
        verb, group, resource, subresource = key
        kind = OPERATOR_WRITES.get((group, resource, subresource))
        if kind is None or verb not in kind[1]:
            continue
        counted[kind[0]] += value - before.get(key, 0) - bench_own.get(key, 0)
    counted["events"] += events
    result = {kind: max(0, value) for kind, value in sorted(counted.items())}
    result["total"] = sum(result.values())
    return result
