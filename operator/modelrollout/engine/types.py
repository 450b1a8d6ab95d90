"""What the pure engine sees (Observation) and what it asks for (Action, Decision).

Nothing here does I/O. The reconciler gathers an Observation, calls
``engine.decide(spec, status, observation, now)`` and carries out the actions in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from modelrollout.api.models import MetricResult, ModelRef, ModelRolloutStatus

Slot = Literal["a", "b"]


def other_slot(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


class CommandVerb(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    RETRY = "retry"


@dataclass(frozen=True)
class Command:
    """A manual command read from the annotation ``modelrollout.dev/command``.

    The annotation value is ``<verb>`` or ``<verb>:<id>``; ``id`` (any token, the plugin uses a
    timestamp) makes a repeated command distinct, so each one is handled exactly once.
    """

    verb: CommandVerb
    id: str
    actor: str = "unknown"


@dataclass(frozen=True)
class SlotState:
    """Readiness of one Deployment slot as the real controllers report it."""

    exists: bool = False
    version: str | None = None  # value of the modelrollout.dev/version label on its pod template
    desired: int = 0
    ready: int = 0
    updated: int = 0
    observed_current: bool = False  # deployment.status.observedGeneration == metadata.generation
    total: int = 0  # status.replicas: pods of every ReplicaSet, old ones included

    @property
    def is_ready(self) -> bool:
        """Rolled out, as ``kubectl rollout status`` has it: every replica updated, no old
        replica left, and as many ready. Mid-update an old pod still counts in readyReplicas
        while the new one loads: ready >= desired alone took that for the new version."""
        return (
            self.exists
            and self.observed_current
            and self.desired > 0
            and self.ready >= self.desired
            and self.updated >= self.desired
            and self.total <= self.updated
        )


@dataclass(frozen=True)
class RouteShare:
    """One backend of the managed route: the Service it names, which slot that Service is
    (None: a Service that is no slot of this rollout, e.g. a role Service written by hand),
    and its share of live traffic in percent."""

    service: str
    slot: Slot | None
    percent: int
    role: Literal["stable", "canary"] | None = None  # a role Service: the role it stands for


@dataclass(frozen=True)
class RouteState:
    """What the route object says now (read back by the router), by identity: which Services
    get which share of live traffic, and which one the mirror copies to."""

    found: bool
    shares: tuple[RouteShare, ...] = ()
    mirror: int = 0
    mirror_slot: Slot | None = None
    # Why what is read back is not yet in force: the route's parents (Gateways) have not
    # accepted its current generation. None: in force (or nobody reports on it).
    pending: str | None = None
    # Replica-ratio routing: the candidate's share of ready pods, in percent (None: none ready).
    actual_candidate: float | None = None
    message: str = ""
    version: str | None = None  # the route object's resourceVersion, where it has one

    def percent_to(self, slot: Slot) -> int:
        """The share of live traffic the route sends to ``slot``'s Service."""
        return sum(s.percent for s in self.shares if s.slot == slot)


class GateResult(StrEnum):
    OPEN = "Open"  # webhook answered 2xx
    CLOSED = "Closed"  # webhook answered non-2xx: keep waiting
    TIMEOUT = "Timeout"  # treated like an inconclusive check


@dataclass(frozen=True)
class Observation:
    generation: int
    slots: dict[Slot, SlotState] = field(default_factory=dict)
    route: RouteState | None = None
    # The route object changed since it last served what the status asks, and not by a write
    # of this operator's that is still being read back: someone else edited it.
    route_edited: bool = False
    # Results of the checks the reconciler ran this tick (see engine.checks_due); None = not run.
    analysis: list[MetricResult] | None = None
    command: Command | None = None
    # Gate webhooks called this tick (see engine.gates_due), by webhook name.
    gates: dict[str, GateResult] = field(default_factory=dict)
    # Operator-side validation problems (field path: message); non-empty means InvalidSpec.
    validation_errors: list[str] = field(default_factory=list)
    # Router problems that make traffic unmanageable (route missing, not owned rule...).
    routing_error: str | None = None
    # The operator wakes the rollout as soon as one of its Deployments changes (its watch of
    # them is live): waiting for readiness needs only a rare poll, in case a wake-up is lost.
    slots_watched: bool = False


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class EnsureSlot:
    """Create or update the slot's Deployment and Service to run ``model`` with ``replicas``."""

    slot: Slot
    model: ModelRef
    replicas: int


@dataclass(frozen=True)
class ScaleSlot:
    slot: Slot
    replicas: int


@dataclass(frozen=True)
class SetTraffic:
    """Route ``candidate_weight`` percent to the candidate slot, mirror ``mirror`` percent to it."""

    stable_slot: Slot
    candidate_slot: Slot | None
    candidate_weight: int
    mirror: int


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Notify:
    """A notification for notify/audit webhooks (stage change, promotion, rollback)."""

    event: str
    message: str
    stage: str | None = None
    """The stage when it was decided (one tick may enter the last stage and promote)."""


Action = EnsureSlot | ScaleSlot | SetTraffic | EmitEvent | Notify


class Wake(StrEnum):
    """What the engine waits for when it asks to look again at a time."""

    READINESS = "readiness"  # a slot to become ready (a poll: the watch wakes it sooner)
    DEADLINE = "deadline"  # the progress deadline
    ANALYSIS = "analysis"  # the next analysis run
    STAGE_END = "stage-end"  # the end of the stage's duration
    GATE = "gate"  # the next call of a gate webhook
    CONVERGE = "converge"  # the route to read back as written
    HOLD = "hold"  # a held rollout (invalid spec, routing error), looked at again
    INTERVAL = "interval"  # nothing sooner: one analysis interval at most


@dataclass(frozen=True)
class Decision:
    status: ModelRolloutStatus
    actions: list[Action]
    # When the engine next needs to look (stage end, next analysis, deadline); None = on change.
    requeue_after: timedelta | None = None
    requeue_reason: Wake | None = None
    # What else the tick was waiting for (stage end, analysis, deadline...), so that
    # engine.read_back can tell the next look once the route needs none (timestamps, small).
    wakes: tuple[tuple[datetime, Wake], ...] = ()
