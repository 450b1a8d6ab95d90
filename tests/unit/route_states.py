"""RouteStates for tests: what a router reads back when the route serves a given split."""

from __future__ import annotations

from modelrollout.engine.types import RouteShare, RouteState, Slot, other_slot


def serving(
    weight: int = 0,
    mirror: int = 0,
    *,
    stable: Slot = "a",
    candidate: Slot | None = None,
    rollout: str = "m",
) -> RouteState:
    """The route of rollout ``rollout`` sends ``100 - weight``% to the stable slot's Service and
    ``weight``% to the candidate's (the other slot unless named), mirroring ``mirror``% to it."""
    candidate = candidate or other_slot(stable)
    shares = [RouteShare(f"{rollout}-{stable}", stable, 100 - weight)]
    if weight or mirror:
        shares.append(RouteShare(f"{rollout}-{candidate}", candidate, weight))
    return RouteState(
        found=True,
        shares=tuple(shares),
        mirror=mirror,
        mirror_slot=candidate if mirror else None,
        message=f"{rollout}-{stable} {100 - weight}%",
    )
