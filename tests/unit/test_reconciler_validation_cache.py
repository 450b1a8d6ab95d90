"""The reconciler validates a ModelRollout once per spec generation, not on every tick."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout import reconciler as reconciler_module
from modelrollout.reconciler import Reconciler


def body(generation: int, uid: str = "u-1", replicas: Any = 1) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "m", "uid": uid, "generation": generation},
        "spec": {"replicas": replicas},
        "status": {},
    }


def test_validation_runs_once_per_generation_and_again_for_a_new_spec_or_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []

    def validate(obj: dict[str, Any]) -> list[str]:
        calls.append(obj["spec"]["replicas"])
        return [] if obj["spec"]["replicas"] == 1 else ["spec.replicas: must be an integer"]

    monkeypatch.setattr(reconciler_module.validation, "validate", validate)
    rec = Reconciler(kube=None, providers=None, post_event=lambda *_: None)  # type: ignore[arg-type]

    assert rec._validate(body(1), 1) == []
    assert rec._validate(body(1), 1) == []
    assert calls == [1]
    problems = rec._validate(body(2, replicas="x"), 2)  # a spec edit bumps the generation
    assert problems == ["spec.replicas: must be an integer"]
    problems.append("the caller's own problem")  # callers may extend the list they get
    assert rec._validate(body(2, replicas="x"), 2) == ["spec.replicas: must be an integer"]
    assert rec._validate(body(2, uid="u-2"), 2) == []  # deleted and created again
    assert calls == [1, "x", 1]
