"""docs/reliability.md, "What the faults found": a gate that timed out and then opened left
the rollout held for good (the timeout streak counted as inconclusive results and was not
reset). Once every gate answers Open, the streak is over and the stage gets its traffic."""

from __future__ import annotations

from engine_world import T0, at, make_spec, observe, rolling, stage

from modelrollout import engine
from modelrollout.api.models import AnalysisStatus, Phase
from modelrollout.engine.types import GateResult, SetTraffic

PRE_GATE = [{"name": "smoke", "type": "pre-rollout", "url": "http://gate.test/smoke"}]


def test_a_gate_that_opens_after_timeouts_ends_the_hold_and_the_stage_gets_traffic() -> None:
    spec = make_spec("2.0.0", webhooks=PRE_GATE)
    waiting = rolling(0, ready=None, analysis=AnalysisStatus(inconclusive=3)).model_copy(
        update={"stage": stage(0, ready=None).model_copy(update={"candidate_ready_at": T0})}
    )
    held = engine.decide(spec, waiting, observe(gates={"smoke": GateResult.TIMEOUT}), at(31))
    [stalled] = [c for c in held.status.conditions if c.type == "Stalled"]
    assert (stalled.status, stalled.reason) == ("True", "GateTimeout")

    later = at(31 + 600)
    opened = engine.decide(spec, held.status, observe(gates={"smoke": GateResult.OPEN}), later)

    assert opened.status.phase is Phase.PROGRESSING
    assert opened.status.stage is not None and opened.status.stage.ready_at == later
    assert [a for a in opened.actions if isinstance(a, SetTraffic)] == [
        SetTraffic("a", "b", 0, 100)
    ]
    assert opened.status.analysis.inconclusive == 0
    [stalled] = [c for c in opened.status.conditions if c.type == "Stalled"]
    assert stalled.status == "False", stalled
