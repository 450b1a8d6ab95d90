"""The traffic-router interface: one module per provider, a tiny factory in __init__."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelrollout.engine.types import RouteState


@dataclass(frozen=True)
class DesiredRoutes:
    """What the engine wants served: weights in percent, mirror in percent of live traffic."""

    stable_service: str
    candidate_service: str | None
    candidate_weight: int
    mirror: int

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.candidate_weight <= 100:
            problems.append(f"candidate_weight must be 0..100, got {self.candidate_weight}")
        if not 0 <= self.mirror <= 100:
            problems.append(f"mirror must be 0..100, got {self.mirror}")
        if self.candidate_service is None and (self.candidate_weight or self.mirror):
            problems.append("candidate_weight and mirror need a candidate_service")
        if self.candidate_service is not None and self.candidate_service == self.stable_service:
            problems.append(f"stable and candidate are the same Service {self.stable_service!r}")
        if problems:
            raise ValueError("invalid DesiredRoutes: " + "; ".join(problems))

    @property
    def stable_weight(self) -> int:
        return 100 - self.candidate_weight


class RoutingError(Exception):
    """The route cannot be managed (missing object, rule index out of range, ...). Not retryable
    until the user fixes it; the message names the object and the problem."""


class RouteNotFound(RoutingError):
    """The route object itself does not exist (finalize tolerates this one)."""


class TrafficRouter(Protocol):
    async def apply(self, desired: DesiredRoutes) -> bool:
        """Make the route serve ``desired``. Returns True when a write happened (False when it
        already did: idempotent re-apply writes nothing). Retries on 409 conflicts."""
        ...

    async def observe(self) -> RouteState:
        """Read back what the route object says now."""
        ...

    async def verify(self, desired: DesiredRoutes) -> bool:
        """True when what is read back equals ``desired``."""
        ...

    async def finalize(self, stable_service: str) -> None:
        """On deletion: leave the route pointing 100% at a live backend, mirror removed."""
        ...

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        """How many replicas slot ``service`` should run (the engine asked for ``asked``) while
        the route is ``desired``: ``asked`` where traffic is weighted by the route, the split
        where it is weighted by replica counts."""
        ...
