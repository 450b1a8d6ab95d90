"""Durations the engine works with, parsed from the spec, and a compact way to print them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelrollout.api.models import ModelRolloutSpec, Stage, parse_duration

MIN_REQUEUE = timedelta(seconds=1)
"""The shortest requeue."""

READY_POLL = timedelta(seconds=5)
"""The poll period while waiting for a slot's readiness when nothing else tells the operator
that it changed (polling every second cost 1,000 reconciles a second at 1,000 rollouts,
docs/performance.md)."""

READY_POLL_WATCHED = timedelta(seconds=30)
"""The same when the operator watches the rollout's Deployments (``Observation.slots_watched``):
a change wakes the rollout at once, the poll only covers a lost wake-up. With 5 s, half of
all reconciles at 1,000 rollouts were these polls while the candidates' pods started
(docs/performance.md)."""


def ready_poll(watched: bool) -> timedelta:
    return READY_POLL_WATCHED if watched else READY_POLL

HOLD_RETRY = timedelta(seconds=30)
"""How often a held rollout (invalid spec, routing error) is looked at again."""

GATE_POLL = timedelta(seconds=10)
"""How often gate webhooks are called while the rollout waits on them."""

MIN_INTERVAL = timedelta(seconds=1)
"""An analysis interval shorter than this is taken as this (``0s`` must not mean 'always due')."""


def utc(now: datetime) -> datetime:
    """``now`` in UTC; a naive datetime is a programming error, not a guess."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (UTC), got naive {now.isoformat()}")
    return now.astimezone(UTC)


def analysis_interval(spec: ModelRolloutSpec) -> timedelta:
    return max(parse_duration(spec.analysis.interval), MIN_INTERVAL)


def gate_interval(spec: ModelRolloutSpec) -> timedelta:
    return min(GATE_POLL, analysis_interval(spec))


def stage_duration(stage: Stage) -> timedelta:
    return parse_duration(stage.duration) if stage.duration else timedelta(0)


def progress_deadline(spec: ModelRolloutSpec) -> timedelta:
    return parse_duration(spec.progress_deadline)


def human(delta: timedelta) -> str:
    """``1h2m3s`` style, whole seconds, never negative."""
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"
