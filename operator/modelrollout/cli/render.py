"""Pure rendering for the kubectl plugin: a ModelRollout object (a dict) and ``now`` in, text out.

Nothing here talks to a cluster, so every view is unit-tested on hand-written objects. The
status is read with the API models (which tolerate unknown fields); the spec is read loosely
(only the stages matter here), so a rollout written by a newer operator still renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from modelrollout.api.models import (
    TERMINAL_PHASES,
    HistoryEntry,
    MetricResult,
    ModelRef,
    ModelRolloutStatus,
    Phase,
    Verdict,
    default_stages,
    parse_duration,
)

BAR_WIDTH = 30


class RenderError(ValueError):
    """The object cannot be shown (its status does not parse)."""


# ----------------------------------------------------------------------------- reading


def object_ref(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def read_status(obj: Mapping[str, Any]) -> ModelRolloutStatus:
    """The object's status as the API model; an empty status is the initial one."""
    namespace, name = object_ref(obj)
    try:
        return ModelRolloutStatus.model_validate(obj.get("status") or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'status'}: {err['msg']}"
            for err in exc.errors()[:3]
        )
        raise RenderError(
            f"the status of modelrollout {namespace}/{name} cannot be read: {problems}"
        ) from exc


@dataclass(frozen=True)
class StageView:
    name: str
    weight: int
    mirror: int
    duration: timedelta | None


def read_stages(obj: Mapping[str, Any]) -> list[StageView]:
    """spec.stages (or the defaults), read loosely: a bad duration shows as none."""
    raw = (obj.get("spec") or {}).get("stages")
    if not raw:
        raw = [s.model_dump(by_alias=True) for s in default_stages()]
    stages = []
    for i, item in enumerate(raw):
        item = item if isinstance(item, Mapping) else {}
        duration: timedelta | None = None
        if item.get("duration"):
            try:
                duration = parse_duration(str(item["duration"]))
            except Exception:
                duration = None
        stages.append(
            StageView(
                name=str(item.get("name") or f"stage-{i}"),
                weight=_int(item.get("weight")),
                mirror=_int(item.get("mirror")),
                duration=duration,
            )
        )
    return stages


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _creation(obj: Mapping[str, Any]) -> datetime | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if isinstance(stamp, datetime):
        return _aware(stamp)
    if isinstance(stamp, str) and stamp:
        try:
            return _aware(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def is_settled(obj: Mapping[str, Any], status: ModelRolloutStatus | None = None) -> bool:
    """In a terminal phase *for the current spec* (a new version applied is not settled yet)."""
    status = status or read_status(obj)
    if status.phase not in TERMINAL_PHASES:
        return False
    generation = (obj.get("metadata") or {}).get("generation")
    return not (
        isinstance(generation, int)
        and status.observed_generation is not None
        and status.observed_generation < generation
    )


# ----------------------------------------------------------------------------- formatting


def human_duration(delta: timedelta) -> str:
    """kubectl's short age format: 45s, 5m30s, 95m, 5h30m, 3d4h, 30d, 2y."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def clock(delta: timedelta) -> str:
    """A countdown: 1h02m03s, 4m05s, 9s."""
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _ago(when: datetime | None, now: datetime) -> str:
    when = _aware(when)
    return "-" if when is None else human_duration(now - when)


def _iso(when: datetime | None) -> str:
    when = _aware(when)
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "NaN"
    return f"{value:.4g}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A kubectl-style table: left-aligned columns, three spaces apart, no trailing blanks."""
    all_rows = [list(headers), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _version(ref: ModelRef | None, fallback: str | None) -> str:
    if ref is not None:
        return ref.version
    return fallback or "-"


def _weight(status: ModelRolloutStatus) -> str:
    w = status.weights
    text = f"{w.candidate}%"
    if w.actual_candidate is not None:
        text += f" (~{w.actual_candidate:.0f}%)"
    if w.mirror:
        text += f" mirror:{w.mirror}%"
    return text


# ----------------------------------------------------------------------------- list


LIST_HEADERS = ("NAMESPACE", "NAME", "PHASE", "STAGE", "WEIGHT", "STABLE", "CANDIDATE", "AGE")


def list_row(obj: Mapping[str, Any], now: datetime) -> list[str]:
    namespace, name = object_ref(obj)
    age = _ago(_creation(obj), now)
    try:
        status = read_status(obj)
    except RenderError:
        return [namespace, name, "<unreadable status>", "-", "-", "-", "-", age]
    stages = read_stages(obj)
    stage = "-"
    if status.stage is not None:
        stage = f"{status.stage.name} ({status.stage.index + 1}/{len(stages)})"
    return [
        namespace,
        name,
        status.phase.value,
        stage,
        _weight(status) if status.stage is not None else "-",
        _version(status.stable, status.stable_version),
        _version(status.candidate, status.candidate_version),
        age,
    ]


def render_list(objects: Iterable[Mapping[str, Any]], now: datetime) -> str:
    rows = sorted((list_row(o, now) for o in objects), key=lambda r: (r[0], r[1]))
    return table(LIST_HEADERS, rows)


# ----------------------------------------------------------------------------- stage clock


@dataclass(frozen=True)
class StageClock:
    """Where the current stage's clock stands."""

    duration: timedelta | None
    elapsed: timedelta | None  # None while the clock has not started (candidate not ready)
    paused: bool

    @property
    def remaining(self) -> timedelta | None:
        if self.duration is None or self.elapsed is None:
            return None
        return max(timedelta(0), self.duration - self.elapsed)

    @property
    def fraction(self) -> float | None:
        if self.duration is None or self.elapsed is None or self.duration <= timedelta(0):
            return None
        return min(1.0, max(0.0, self.elapsed / self.duration))


def stage_clock(
    status: ModelRolloutStatus, stages: Sequence[StageView], now: datetime
) -> StageClock | None:
    """The clock of the current stage: stage.readyAt + spec duration - now, frozen while paused."""
    if status.stage is None:
        return None
    index = status.stage.index
    duration = stages[index].duration if 0 <= index < len(stages) else None
    paused = status.phase == Phase.PAUSED or status.paused_at is not None
    ready_at = _aware(status.stage.ready_at)
    if ready_at is None:
        return StageClock(duration=duration, elapsed=None, paused=paused)
    end = _aware(status.paused_at) if paused and status.paused_at is not None else now
    assert end is not None
    return StageClock(duration=duration, elapsed=max(timedelta(0), end - ready_at), paused=paused)


def time_left_text(status: ModelRolloutStatus, stages: Sequence[StageView], now: datetime) -> str:
    if status.phase in TERMINAL_PHASES:
        return "-"
    sc = stage_clock(status, stages, now)
    if sc is None:
        return "- (not started)"
    suffix = " (paused: the stage clock is stopped)" if sc.paused else ""
    if sc.duration is None:
        return "no fixed duration: promotes once the analysis passes" + suffix
    if sc.elapsed is None:
        return f"{clock(sc.duration)} (clock starts when the candidate is ready){suffix}"
    remaining = sc.remaining
    assert remaining is not None
    if remaining <= timedelta(0):
        return f"0s of {clock(sc.duration)} (duration over, waiting for the analysis)" + suffix
    return f"{clock(remaining)} of {clock(sc.duration)}{suffix}"


# ----------------------------------------------------------------------------- status


def _model_line(ref: ModelRef | None, fallback: str | None) -> str:
    if ref is None:
        return fallback or "-"
    parts = [f"{ref.name} {ref.version}", ref.uri]
    if ref.digest:
        parts.append(ref.digest)
    return "   ".join(parts)


def _metric_value(result: MetricResult) -> str:
    text = _number(result.value)
    extra = []
    if result.stable_value is not None:
        extra.append(f"stable {_number(result.stable_value)}")
    if result.p_value is not None:
        extra.append(f"p={result.p_value:.3g}")
    return f"{text} ({', '.join(extra)})" if extra else text


def metrics_table(results: Sequence[MetricResult], now: datetime) -> str:
    rows = [
        [
            r.name,
            _metric_value(r),
            r.bound or "-",
            r.verdict.value,
            _ago(r.measured_at, now),
            r.message or "",
        ]
        for r in results
    ]
    return table(("METRIC", "VALUE", "BOUND", "VERDICT", "AGE", "MESSAGE"), rows)


def _last(history: Sequence[HistoryEntry], *words: str) -> HistoryEntry | None:
    for entry in reversed(history):
        if any(w.lower() in entry.event.lower() for w in words):
            return entry
    return None


def pause_reason(status: ModelRolloutStatus) -> str | None:
    """Why the rollout is paused, or None when it is not."""
    if status.phase != Phase.PAUSED and status.paused_at is None:
        return None
    since = f" since {_iso(status.paused_at)}" if status.paused_at else ""
    if status.paused_by == "spec":
        return f"spec.paused is true{since}"
    entry = _last(status.history, "pause")
    if status.paused_by == "command" or entry is not None:
        who = f" by {entry.actor}" if entry is not None else ""
        why = f": {entry.reason}" if entry is not None and entry.reason else ""
        return f"pause command{who}{since}{why}"
    return f"paused{since}" + (f": {status.message}" if status.message else "")


def rollback_reason(status: ModelRolloutStatus) -> list[str]:
    """Why the rollout rolled back or failed: the reason and the results that decided it."""
    if status.phase not in (Phase.ROLLED_BACK, Phase.FAILED) and not status.rollback_reason:
        return []
    entry = _last(status.history, "rolledback", "rollback", "failed", "abort")
    lines = []
    reason = status.rollback_reason or (entry.reason if entry else "") or status.message
    if reason:
        lines.append(reason)
    if entry is not None:
        lines.append(f"decided by {entry.actor} at {_iso(entry.time)} ({entry.event})")
        for m in entry.metrics:
            if m.verdict != Verdict.SUCCESSFUL:
                bound = f" vs {m.bound}" if m.bound else ""
                lines.append(f"{m.name}: {_metric_value(m)}{bound} -> {m.verdict.value}")
    return lines


def render_status(obj: Mapping[str, Any], now: datetime) -> str:
    """``kubectl modelrollout status NAME``."""
    namespace, name = object_ref(obj)
    status = read_status(obj)
    stages = read_stages(obj)
    out: list[str] = []

    def field(label: str, value: str) -> None:
        out.append(f"{label + ':':<13}{value}")

    field("Name", name)
    field("Namespace", namespace)
    field("Phase", status.phase.value)
    if status.message.strip():
        field("Message", status.message.strip())
    if status.stage is not None:
        st = status.stage
        field(
            "Stage",
            f"{st.name} ({st.index + 1}/{len(stages)}), weight {st.weight}%, mirror {st.mirror}%",
        )
        field("Time left", time_left_text(status, stages, now))
    else:
        field("Stage", "-")
    w = status.weights
    traffic = f"stable {w.stable}%   candidate {w.candidate}%   mirror {w.mirror}%"
    if w.actual_candidate is not None:
        # The replica router reports the candidate's share of the ready pods, in percent.
        traffic += f"   (replica routing: actual candidate share {w.actual_candidate:.1f}%)"
    field("Traffic", traffic)
    field("Stable", _model_line(status.stable, status.stable_version))
    field("Candidate", _model_line(status.candidate, status.candidate_version))
    paused = pause_reason(status)
    if paused:
        field("Paused", paused)
    why = rollback_reason(status)
    if why:
        label = "Failed" if status.phase == Phase.FAILED else "Rolled back"
        field(label, why[0])
        out.extend(" " * 13 + line for line in why[1:])
    if status.last_command:
        field("Last command", status.last_command)

    a = status.analysis
    out.append("")
    if a.last_run_at is None:
        out.append("Analysis:    no run yet in this stage")
    else:
        verdict = a.last_verdict.value if a.last_verdict else "-"
        out.append(
            f"Analysis:    {a.runs} run(s) in this stage, last {_ago(a.last_run_at, now)} ago, "
            f"verdict {verdict}; failures {a.failures}, inconclusive {a.inconclusive}, "
            f"errors {a.errors}"
        )
    if a.results:
        out.extend("  " + line for line in metrics_table(a.results, now).splitlines())

    out.append("")
    if status.conditions:
        out.append("Conditions:")
        rows = [
            [c.type, c.status, c.reason, _ago(c.last_transition_time, now), c.message]
            for c in status.conditions
        ]
        out.extend(
            "  " + line
            for line in table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), rows).splitlines()
        )
    else:
        out.append("Conditions:  -")
    return "\n".join(out)


# ----------------------------------------------------------------------------- history


def _raw_history(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = (obj.get("status") or {}).get("history") or []
    return [dict(e) for e in raw if isinstance(e, Mapping)]


def render_history(obj: Mapping[str, Any], fmt: Literal["table", "json"] = "table") -> str:
    """``kubectl modelrollout history NAME``: the audit trail as a table or as JSON."""
    if fmt == "json":
        return json.dumps(_raw_history(obj), indent=2, sort_keys=False)
    status = read_status(obj)
    rows = [
        [
            str(e.seq),
            _iso(e.time),
            e.event,
            e.from_stage or "-",
            e.to_stage or "-",
            e.model.version if e.model else "-",
            e.actor,
            (e.hash or "-")[:12],
            e.reason,
        ]
        for e in status.history
    ]
    if not rows:
        return "No history yet."
    return table(
        ("SEQ", "TIME", "EVENT", "FROM", "TO", "VERSION", "ACTOR", "HASH", "REASON"), rows
    )


# ----------------------------------------------------------------------------- watch


StageState = Literal["done", "current", "pending", "rolled-back", "failed", "skipped"]


@dataclass(frozen=True)
class StageProgress:
    name: str
    state: StageState
    fraction: float  # 0..1 of the bar to fill
    note: str


def stage_progress(obj: Mapping[str, Any], now: datetime) -> list[StageProgress]:
    """One entry per spec stage: done, current (with % of its duration elapsed), or pending."""
    status = read_status(obj)
    stages = read_stages(obj)
    current = status.stage.index if status.stage is not None else -1
    phase = status.phase
    result = []
    for i, stage in enumerate(stages):
        traffic = f"weight {stage.weight}%" + (f", mirror {stage.mirror}%" if stage.mirror else "")
        if phase == Phase.SUCCEEDED or i < current:
            result.append(StageProgress(stage.name, "done", 1.0, traffic))
        elif i > current:
            state: StageState = "skipped" if phase in TERMINAL_PHASES else "pending"
            result.append(StageProgress(stage.name, state, 0.0, traffic))
        elif phase in (Phase.ROLLED_BACK, Phase.FAILED):
            sc = stage_clock(status, stages, now)
            fill = sc.fraction if sc is not None and sc.fraction is not None else 0.0
            state = "failed" if phase == Phase.FAILED else "rolled-back"
            result.append(StageProgress(stage.name, state, fill, traffic))
        else:
            sc = stage_clock(status, stages, now)
            fill = 0.0
            note = traffic
            if sc is not None:
                if sc.fraction is not None:
                    fill = sc.fraction
                    note += f", {fill * 100:.0f}% of {clock(sc.duration or timedelta(0))}"
                    note += f", {clock(sc.remaining or timedelta(0))} left"
                elif sc.duration is None:
                    note += ", until the analysis passes"
                else:
                    note += ", waiting for the candidate to be ready"
                if sc.paused:
                    note += " (paused)"
            result.append(StageProgress(stage.name, "current", fill, note))
    return result


_MARKS: dict[StageState, str] = {
    "done": "done",
    "current": ">>",
    "pending": "pending",
    "rolled-back": "ROLLED BACK",
    "failed": "FAILED",
    "skipped": "skipped",
}


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render_watch(obj: Mapping[str, Any], now: datetime) -> str:
    """One frame of ``kubectl modelrollout watch NAME``."""
    namespace, name = object_ref(obj)
    status = read_status(obj)
    lines = [
        f"modelrollout {namespace}/{name}   {status.phase.value}   "
        f"{_version(status.stable, status.stable_version)} -> "
        f"{_version(status.candidate, status.candidate_version)}   "
        f"traffic: candidate {_weight(status)}",
    ]
    if status.message.strip():
        lines.append(status.message.strip())
    lines.append("")
    progress = stage_progress(obj, now)
    width = max((len(p.name) for p in progress), default=0)
    for p in progress:
        lines.append(
            f"  {p.name:<{width}}  {progress_bar(p.fraction)} {_MARKS[p.state]:<12} {p.note}"
        )
    results = status.analysis.results
    if results:
        lines.append("")
        lines.extend(
            f"  {r.name}: {_metric_value(r)}"
            + (f" vs {r.bound}" if r.bound else "")
            + f"  {r.verdict.value}"
            for r in results
        )
    paused = pause_reason(status)
    if paused:
        lines.extend(["", f"Paused: {paused}"])
    why = rollback_reason(status)
    if why:
        lines.extend(["", "Rolled back: " + why[0], *("  " + w for w in why[1:])])
    return "\n".join(lines)
