"""The engine's working copy: equal to the status, sharing nothing mutable but sealed entries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine_world import T0, V2, at, rolling
from pydantic import BaseModel

from modelrollout.api.models import (
    AnalysisStatus,
    Condition,
    HistoryEntry,
    MetricResult,
    ModelRolloutStatus,
    Verdict,
)
from modelrollout.engine.machine import working_copy


def full_status() -> ModelRolloutStatus:
    result = MetricResult(name="error-rate", verdict=Verdict.SUCCESSFUL, value=0.001)
    status = rolling(
        2,
        analysis=AnalysisStatus(runs=3, last_run_at=at(5), results=[result]),
        conditions=[Condition(type="Ready", status="False", reason="Progressing")],
        paused_by="command",
    )
    status.history = [
        HistoryEntry(time=T0, event="StageStarted", model=V2, metrics=[result], seq=1)
    ]
    return status


def mutable_parts(value: Any, path: str = "status") -> Iterator[tuple[str, Any]]:
    """Every model and list inside ``value`` except the audit entries, with its path."""
    if isinstance(value, BaseModel):
        yield path, value
        for name in type(value).model_fields:
            if name != "history":
                yield from mutable_parts(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        yield path, value
        for i, item in enumerate(value):
            yield from mutable_parts(item, f"{path}[{i}]")


def test_the_copy_is_equal_and_dumps_the_same() -> None:
    status = full_status()
    copied = working_copy(status)
    assert copied == status
    assert copied.model_dump(mode="json", by_alias=True) == status.model_dump(
        mode="json", by_alias=True
    )
    assert copied.model_fields_set == status.model_fields_set
    assert copied.stage is not None and status.stage is not None
    assert copied.stage.model_fields_set == status.stage.model_fields_set


def test_the_copy_shares_no_model_or_list_with_the_status() -> None:
    status = full_status()
    copied = working_copy(status)
    originals = dict(mutable_parts(status))
    copies = dict(mutable_parts(copied))
    assert originals.keys() == copies.keys() and len(copies) >= 10
    shared = [path for path in copies if copies[path] is originals[path]]
    assert shared == []


def test_editing_the_copy_leaves_the_status_as_it_was() -> None:
    status = full_status()
    before = status.model_dump(mode="json")
    copied = working_copy(status)
    assert copied.stage is not None
    copied.stage.weight = 99
    copied.analysis.results[0].verdict = Verdict.FAILED
    copied.analysis.results.append(copied.analysis.results[0])
    copied.conditions[0].status = "True"
    copied.weights.candidate = 50
    copied.history.append(copied.history[0])
    assert status.model_dump(mode="json") == before


def test_the_audit_entries_are_shared_and_the_history_list_is_not() -> None:
    status = full_status()
    copied = working_copy(status)
    assert copied.history is not status.history
    assert copied.history[0] is status.history[0]  # sealed: never edited, only appended
