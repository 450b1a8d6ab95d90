"""The Argo CD health check and resource actions, run in a real Lua 5.1 runtime.

Argo CD embeds gopher-lua (Lua 5.1): each script runs with the live object in the global
``obj`` and returns the health table, the action table, or the modified object.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import pytest
from lupa import lua51  # type: ignore[import-untyped]

from modelrollout.api.models import Phase
from modelrollout.engine.types import CommandVerb
from tests.unit.chart.rendering import CHART

LUA_DIR = CHART / "files" / "argocd"
VERBS = ("pause", "resume", "promote", "abort", "retry")


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _from_lua(value: Any) -> Any:
    if lua51.lua_type(value) != "table":
        return value
    items = dict(value.items())
    if items and set(items) == set(range(1, len(items) + 1)):
        return [_from_lua(items[i]) for i in range(1, len(items) + 1)]
    return {k: _from_lua(v) for k, v in items.items()}


def run_lua(script: str, obj: dict[str, Any]) -> Any:
    """Run an Argo CD Lua script against ``obj`` in a fresh runtime; its result as Python."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, copy.deepcopy(obj))
    return _from_lua(runtime.execute(script))


def rollout(
    phase: str | None,
    *,
    generation: int = 3,
    observed: int | None = 3,
    conditions: list[dict[str, str]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "fraud", "namespace": "ml", "generation": generation,
                     "resourceVersion": "4711"},
        "spec": {"model": {"name": "fraud", "version": "2.4.0", "uri": "s3://m/2.4.0"}},
    }  # fmt: skip
    if phase is not None:
        obj["status"] = {"phase": phase, "conditions": conditions or [], **status}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


READY = {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "2.4.0 serves 100%"}
NOT_READY = {"type": "Ready", "status": "False", "reason": "Progressing", "message": "canary-5"}
STALLED_INVALID = {"type": "Stalled", "status": "True", "reason": "InvalidSpec",
                   "message": "spec.stages[1]: weight must not decrease"}  # fmt: skip
NOT_STALLED = {"type": "Stalled", "status": "False", "reason": "Progressing", "message": ""}

HEALTH_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status yet", rollout(None), "Progressing", "Waiting for the operator"),
    ("succeeded and ready", rollout("Succeeded", conditions=[READY, NOT_STALLED]), "Healthy",
     "2.4.0 serves 100%"),
    ("succeeded, generation not observed", rollout("Succeeded", generation=4, observed=3,
     conditions=[READY]), "Progressing", "generation 4"),
    ("succeeded, no observedGeneration", rollout("Succeeded", observed=None, conditions=[READY]),
     "Progressing", "generation 3"),
    ("succeeded, not ready yet", rollout("Succeeded", conditions=[NOT_READY]), "Progressing",
     "canary-5"),
    ("succeeded, no conditions", rollout("Succeeded"), "Progressing", "waiting for Ready"),
    ("idle", rollout("Idle", message="initialising 2.4.0"), "Progressing", "initialising 2.4.0"),
    ("progressing", rollout("Progressing", message="stage canary-5", conditions=[NOT_READY,
     NOT_STALLED]), "Progressing", "stage canary-5"),
    ("promoting", rollout("Promoting", message=""), "Progressing", "Promoting"),
    ("paused", rollout("Paused", message="paused by alice"), "Suspended", "paused by alice"),
    ("rolled back", rollout("RolledBack", rollbackReason="error-rate 0.05 > 0.01",
     message="rolled back"), "Degraded", "error-rate 0.05 > 0.01"),
    ("failed", rollout("Failed", message="progress deadline exceeded"), "Degraded",
     "progress deadline exceeded"),
    ("stalled: invalid spec", rollout("Progressing", conditions=[NOT_READY, STALLED_INVALID]),
     "Degraded", "weight must not decrease"),
    ("stalled without message", rollout("Progressing", conditions=[
        {"type": "Stalled", "status": "True", "reason": "RouteNotFound"}]), "Degraded",
     "RouteNotFound"),
    ("stale generation wins over stalled", rollout("Failed", generation=5, observed=4,
     conditions=[STALLED_INVALID]), "Progressing", "generation 5"),
    ("unknown phase", rollout("Exploded"), "Unknown", "Exploded"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [c[1:] for c in HEALTH_CASES],
    ids=[c[0] for c in HEALTH_CASES],
)
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    health = run_lua((LUA_DIR / "health.lua").read_text(), obj)
    assert health["status"] == status
    assert message in health["message"]


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_has_a_known_health(phase: Phase) -> None:
    expected = {
        Phase.IDLE: "Progressing",
        Phase.PROGRESSING: "Progressing",
        Phase.PROMOTING: "Progressing",
        Phase.PAUSED: "Suspended",
        Phase.SUCCEEDED: "Healthy",
        Phase.ROLLED_BACK: "Degraded",
        Phase.FAILED: "Degraded",
    }[phase]
    health = run_lua((LUA_DIR / "health.lua").read_text(), rollout(phase.value, conditions=[READY]))
    assert health["status"] == expected
    assert health["message"]


@pytest.mark.parametrize("verb", VERBS)
def test_action_sets_a_fresh_command_annotation(verb: str) -> None:
    script = (LUA_DIR / "actions" / f"{verb}.lua").read_text()
    # (no empty lists: a Lua table cannot tell an empty list from an empty map)
    before = rollout("Progressing", conditions=[NOT_READY])
    before["metadata"]["annotations"] = {"team": "fraud"}
    started = int(time.time())
    after = run_lua(script, before)

    annotations = after["metadata"].pop("annotations")
    assert annotations["team"] == "fraud"
    assert annotations["modelrollout.dev/command-by"] == "argocd"
    command = annotations["modelrollout.dev/command"]
    m = re.fullmatch(rf"{verb}:argocd-(\d+)-4711", command)
    assert m, command
    assert started <= int(m[1]) <= int(time.time())
    assert set(annotations) == {"team", "modelrollout.dev/command", "modelrollout.dev/command-by"}
    # nothing else in the object changes
    before["metadata"].pop("annotations")
    assert after == before

    # the operator reads it as this verb, by Argo CD (imported here: the reconciler pulls in
    # the whole operator, and only this assertion needs it)
    from modelrollout.reconciler import parse_command

    parsed = parse_command(annotations)
    assert parsed is not None
    assert parsed.verb is CommandVerb(verb) and parsed.actor == "argocd"


@pytest.mark.parametrize("verb", VERBS)
def test_action_works_without_annotations_and_repeats_are_distinct(verb: str) -> None:
    script = (LUA_DIR / "actions" / f"{verb}.lua").read_text()
    first = run_lua(script, rollout("Paused"))
    again = rollout("Paused")
    again["metadata"]["annotations"] = first["metadata"]["annotations"]
    again["metadata"]["resourceVersion"] = "4712"  # the first action's write bumped it
    second = run_lua(script, again)
    one = first["metadata"]["annotations"]["modelrollout.dev/command"]
    two = second["metadata"]["annotations"]["modelrollout.dev/command"]
    assert one.startswith(f"{verb}:") and two.startswith(f"{verb}:")
    assert one != two


ENABLED = {
    "Idle": set(),
    "Progressing": {"pause", "promote", "abort"},
    "Promoting": {"pause", "promote", "abort"},
    "Paused": {"resume", "promote", "abort"},
    "Succeeded": set(),
    "RolledBack": {"retry"},
    "Failed": {"retry"},
}


@pytest.mark.parametrize("phase", [*ENABLED, None])
def test_discovery_offers_the_actions_that_apply(phase: str | None) -> None:
    actions = run_lua((LUA_DIR / "actions" / "discovery.lua").read_text(), rollout(phase))
    assert set(actions) == set(VERBS)
    enabled = {verb for verb, action in actions.items() if not action["disabled"]}
    assert enabled == ENABLED.get(phase or "", set())
    assert all(action["iconClass"].startswith("fa ") for action in actions.values())


def test_enabled_table_covers_every_phase() -> None:
    assert set(ENABLED) == {p.value for p in Phase}
