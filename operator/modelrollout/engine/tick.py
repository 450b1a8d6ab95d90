"""The scratchpad of one decision: the status being rewritten and the actions being collected."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from modelrollout import audit
from modelrollout.api.models import (
    HistoryEntry,
    MetricCheck,
    MetricResult,
    ModelRef,
    ModelRolloutSpec,
    ModelRolloutStatus,
    WebhookSpec,
)
from modelrollout.engine.timing import ready_poll
from modelrollout.engine.types import Action, EmitEvent, Notify, Observation, Wake

OPERATOR = "modelrollout-operator"


@dataclass
class Tick:
    spec: ModelRolloutSpec
    obs: Observation
    now: datetime
    before: ModelRolloutStatus  # the status decide was given
    status: ModelRolloutStatus  # the status being rewritten
    history_limit: int = audit.DEFAULT_LIMIT
    # The status at the start of the current step (decide steps until nothing changes), and
    # the checks and gates that were due then: only their results count in this step.
    step_start: ModelRolloutStatus | None = None
    due_checks: list[MetricCheck] = field(default_factory=list)
    due_gates: list[WebhookSpec] = field(default_factory=list)
    # Workload and traffic actions, in the order they must happen.
    effects: list[Action] = field(default_factory=list)
    # Events and notifications, sent after the effects.
    signals: list[Action] = field(default_factory=list)
    # True when a transition moved traffic away from a slot: its effects go before the
    # routine EnsureSlots so nothing stands between the decision and the traffic shift.
    urgent: bool = False
    wakes: list[tuple[datetime, Wake]] = field(default_factory=list)
    # (reason, message) for a Stalled condition caused by a transition in this tick.
    stall: tuple[str, str] | None = None
    # (reason, message) when the whole tick is held (invalid spec, routing error).
    hold: tuple[str, str] | None = None

    def act(self, action: Action) -> None:
        self.effects.append(action)

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.signals.append(EmitEvent(kind, reason, message))

    def notify(self, event: str, message: str) -> None:
        stage = self.status.stage.name if self.status.stage else None
        self.signals.append(Notify(event, message, stage))

    def wake_at(self, when: datetime | None, why: Wake) -> None:
        if when is not None:
            self.wakes.append((when, why))

    def wake_in(self, delta: timedelta, why: Wake) -> None:
        self.wakes.append((self.now + delta, why))

    def poll_readiness(self) -> None:
        """Look again for a slot's readiness: soon, unless a change of its Deployments wakes
        the rollout anyway (then only in case that wake-up is lost)."""
        self.wake_in(ready_poll(self.obs.slots_watched), Wake.READINESS)

    def record(
        self,
        event: str,
        reason: str = "",
        *,
        from_stage: str | None = None,
        to_stage: str | None = None,
        metrics: Iterable[MetricResult] = (),
        actor: str = OPERATOR,
        model: ModelRef | None = None,
    ) -> None:
        """Append a sealed audit entry about ``model`` (default: the candidate)."""
        entry = HistoryEntry.model_validate(
            {
                "time": self.now,
                "event": event,
                "from": from_stage,
                "to": to_stage,
                "reason": reason,
                "model": model or self.status.candidate,
                "stable_version": self.status.stable_version,
                "metrics": [m.model_copy(deep=True) for m in metrics],
                "actor": actor,
            }
        )
        audit.append(self.status.history, entry, self.history_limit)
