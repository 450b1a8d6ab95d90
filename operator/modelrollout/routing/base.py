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

    @property
    def stable_weight(self) -> int:
        return 100 - self.candidate_weight


class RoutingError(Exception):
    """The route cannot be managed (missing object, rule index out of range, ...). Not retryable
    until the user fixes it; the message names the object and the problem."""


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
