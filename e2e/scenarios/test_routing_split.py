"""Traffic on the real data path follows every stage, through either router (issue 6 acceptance).

Under steady load through the lab gateway, a good version walks shadow -> canary-5 -> canary-25
-> full and is promoted. At each stage the gateway's own counters (reset at stage entry, once it
routes by the route generation the stage wrote) must show the split the stage asks for: in
shadow every request is copied to the candidate and none is served by it; at 5% and 25% the
candidate's share is within binomial tolerance. The user's own rule of the route object stays
byte-identical through the promotion and through a rollback (an abort of a further version).
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.scenarios.support import (
    Gateway,
    RouteSplit,
    Routing,
    create_route,
    history_of,
    managed_split,
    mirrored,
    observed_generation,
    read_route,
    rollout_manifest,
    served,
    stages_entered,
    traffic_routing,
    user_rule,
    within_binomial,
)

pytestmark = pytest.mark.lab

NAME = "scorer"
STABLE, CANDIDATE = f"{NAME}-a", f"{NAME}-b"
RPS = 60
STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "12s"},
    {"name": "canary-5", "weight": 5, "duration": "20s"},
    {"name": "canary-25", "weight": 25, "duration": "12s"},
    {"name": "full", "weight": 100},
]
# Requests counted per stage: well inside the stage at RPS (about 4 s, 10 s and 5 s of load,
# leaving room for a slow gateway on a busy box: the count must end before the stage does).
COUNT = {"shadow": 240, "canary-5": 600, "canary-25": 300}


def live(split: RouteSplit) -> dict[str, int]:
    """Services with live traffic and their weights (a candidate kept at weight 0 is none)."""
    return {service: weight for service, weight in split.weights.items() if weight > 0}


class Scenario:
    """One rollout in the test's namespace, its route and the gateway's counters of that route."""

    def __init__(
        self,
        routing: Routing,
        rollouts: Rollouts,
        api: k8s.ApiClient,
        namespace: str,
        gateway: Gateway,
    ) -> None:
        self.routing, self.rollouts, self.api = routing, rollouts, api
        self.namespace, self.gateway = namespace, gateway

    def apply(self, version: str, stages: list[dict[str, Any]]) -> None:
        self.rollouts.apply(
            rollout_manifest(
                NAME,
                version,
                routing=self.routing,
                stages=stages,
                extra_spec={"trafficRouting": traffic_routing(self.routing, NAME)},
            )
        )

    def split(self) -> RouteSplit:
        return managed_split(self.api, self.namespace, self.routing, NAME)

    def stats(self) -> dict[str, Any]:
        return self.gateway.stats(self.namespace, self.routing, NAME)

    def user_rule(self) -> str:
        return user_rule(read_route(self.api, self.namespace, self.routing, NAME), self.routing)

    def wait_split(
        self,
        what: str,
        weights: dict[str, int],
        mirrors: dict[str, int],
        *,
        routed: bool = True,
        timeout: float = 30,
    ) -> RouteSplit:
        """Wait until the route object carries the split, then (``routed``: under load) until
        the gateway routes by it."""

        def carried() -> RouteSplit | None:
            split = self.split()
            return split if live(split) == weights and split.mirrors == mirrors else None

        split = wait_for(f"the route to carry {what}", carried, timeout=timeout)
        if not routed:
            return split
        wait_for(
            f"the gateway to route by generation {split.generation} ({what})",
            lambda: observed_generation(self.stats()) == split.generation,
            timeout=15,
        )
        return split

    def count_stage(
        self, stage: str, weights: dict[str, int], mirrors: dict[str, int]
    ) -> dict[str, Any]:
        """The gateway's counts of COUNT[stage] requests, all routed by the stage's route."""
        self.rollouts.wait_stage(NAME, stage, timeout=90)
        split = self.wait_split(f"the {stage} split", weights, mirrors)
        self.gateway.reset_stats(self.namespace, self.routing, NAME)
        stats = wait_for(
            f"{COUNT[stage]} requests counted in {stage}",
            lambda: (s := self.stats())["total"] >= COUNT[stage] and s,
            timeout=COUNT[stage] / RPS * 3,
        )
        # Nothing moved while counting: the same route generation served every request.
        assert observed_generation(stats) == split.generation, (stage, stats["observed"])
        assert self.split().generation == split.generation, f"the route changed during {stage}"
        assert stats["unrouted"] == {}, stats
        return dict(stats)


@pytest.mark.parametrize("routing", ["gatewayAPI", "istio"])
def test_every_stage_gets_the_split_it_asks_for_and_the_users_rule_survives(
    routing: Routing,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    sc = Scenario(routing, rollouts, kube_api, namespace, gateway)
    create_route(kube_api, namespace, routing, NAME)
    original_user_rule = sc.user_rule()

    sc.apply("1.0.0", STAGES)
    rollouts.wait_phase(NAME, "Succeeded", timeout=90)
    sc.wait_split("the first version", {STABLE: 100}, {}, routed=False)

    gateway.start_load(namespace, routing, NAME, rps=RPS)
    try:
        sc.apply("2.0.0", STAGES)

        # Shadow: every request copied to the candidate, none served by it.
        stats = sc.count_stage("shadow", {STABLE: 100}, {CANDIDATE: 100})
        primary = served(stats, STABLE)
        assert served(stats, CANDIDATE) == 0, stats
        assert primary == stats["total"], stats
        # A copy is counted when its answer arrives, a request when its answer does: copies in
        # flight at the snapshot count, requests in flight (the gateway does not say how many;
        # up to 20 at 60 rps on a busy box) or straddling the reset make the only difference.
        copies = mirrored(stats, CANDIDATE) + stats["mirrorsInFlight"]
        assert abs(copies - primary) <= max(10, 0.1 * primary), stats
        assert stats["mirrorsDropped"] == 0, stats

        # The canaries: the served share is the stage's weight, within binomial tolerance.
        for stage, weight in (("canary-5", 5), ("canary-25", 25)):
            stats = sc.count_stage(stage, {STABLE: 100 - weight, CANDIDATE: weight}, {})
            hits, total = served(stats, CANDIDATE), stats["total"]
            assert hits + served(stats, STABLE) == total, stats
            assert within_binomial(hits, total, weight / 100), (
                f"{stage}: candidate served {hits} of {total} ({hits / total:.1%}), "
                f"expected {weight}% within 4 sigma"
            )
            assert mirrored(stats, CANDIDATE) == 0, stats

        def promoted() -> dict[str, Any] | None:
            status = rollouts.status(NAME)
            ok = status.get("phase") == "Succeeded" and status.get("stableVersion") == "2.0.0"
            return status if ok else None

        status = wait_for("2.0.0 to be promoted", promoted, timeout=60)
        assert status["stableSlot"] == "b"
        assert stages_entered(status)[-4:] == ["shadow", "canary-5", "canary-25", "full"]
        entered = history_of(status, "StageEntered")
        assert [h["to"] for h in entered if h["model"]["version"] == "2.0.0"] == [
            "shadow",
            "canary-5",
            "canary-25",
            "full",
        ]
        assert [h["model"]["version"] for h in history_of(status, "Promoted")][-1:] == ["2.0.0"]
        sc.wait_split("the promoted version only", {CANDIDATE: 100}, {})
        assert sc.user_rule() == original_user_rule, "the promotion changed the user's rule"

        # A further version, aborted in shadow: traffic back on 2.0.0, the user's rule intact.
        sc.apply(
            "3.0.0",
            [{"name": "shadow", "mirror": 100, "duration": "10m"}, {"name": "full", "weight": 100}],
        )
        rollouts.wait_stage(NAME, "shadow", timeout=90)
        sc.wait_split("3.0.0 in shadow", {CANDIDATE: 100}, {STABLE: 100})
        rollouts.annotate(
            NAME,
            {"modelrollout.dev/command": "abort:e2e-split", "modelrollout.dev/command-by": "e2e"},
        )
        status = rollouts.wait_phase(NAME, "RolledBack", timeout=60)
        assert status["stableVersion"] == "2.0.0"
        sc.wait_split("the stable version only after the abort", {CANDIDATE: 100}, {})
        assert sc.user_rule() == original_user_rule, "the rollback changed the user's rule"
    finally:
        gateway.stop_load(namespace, routing, NAME)
