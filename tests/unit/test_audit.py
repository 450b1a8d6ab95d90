"""The hash-chained audit trail: sealing, bounding, and catching edits, gaps and reordering."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from modelrollout.api.models import (
    HistoryEntry,
    MetricResult,
    ModelRef,
    ModelRolloutStatus,
    Verdict,
)
from modelrollout.audit import QUERY_KEEP, append, canonical_json, compact_query, entry_hash, verify

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MODEL = ModelRef(name="fraud", version="2.0.0", uri="s3://m/2.0.0")


def entry(n: int, **extra: object) -> HistoryEntry:
    return HistoryEntry.model_validate(
        {
            "time": T0 + timedelta(minutes=n),
            "event": "StageEntered",
            "from": f"s{n}",
            "to": f"s{n + 1}",
            "reason": f"step {n}",
            "model": MODEL,
            "stable_version": "1.0.0",
            "metrics": [MetricResult(name="error-rate", verdict=Verdict.SUCCESSFUL, value=0.001)],
            **extra,
        }
    )


def chain(length: int, limit: int = 100) -> list[HistoryEntry]:
    history: list[HistoryEntry] = []
    for n in range(length):
        append(history, entry(n), limit)
    return history


def test_append_seals_a_chain() -> None:
    history = chain(3)
    assert [e.seq for e in history] == [1, 2, 3]
    assert history[0].prev_hash is None
    assert [e.prev_hash for e in history[1:]] == [e.hash for e in history[:-1]]
    assert all(e.hash == entry_hash(e) and len(e.hash) == 64 for e in history if e.hash)
    assert verify(history) == []


def test_append_leaves_the_given_entry_alone() -> None:
    history: list[HistoryEntry] = []
    original = entry(0)
    stored = append(history, original)
    assert original.hash is None and original.seq == 0
    assert stored is history[0] and stored.hash is not None


def test_an_edited_entry_is_caught() -> None:
    history = chain(4)
    history[1].reason = "nothing to see here"
    problems = verify(history)
    assert len(problems) == 1
    assert "seq 2" in problems[0] and "hash mismatch" in problems[0]


def test_an_edited_metric_value_is_caught() -> None:
    history = chain(3)
    history[2].metrics[0].value = 0.5
    assert any("seq 3" in p and "hash mismatch" in p for p in verify(history))


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    history = chain(4)
    history[1].reason = "rewritten"
    history[1].hash = entry_hash(history[1])
    problems = verify(history)
    assert problems == [
        "entry 2 (seq 3, StageEntered): broken chain, prevHash does not match the hash of seq 2"
    ]


def test_a_removed_entry_is_a_gap() -> None:
    history = chain(5)
    del history[2]
    problems = verify(history)
    assert any("gap in the sequence, expected seq 3 after seq 2" in p for p in problems)
    assert any("broken chain" in p for p in problems)


def test_reordered_entries_are_caught() -> None:
    history = chain(4)
    history[1], history[2] = history[2], history[1]
    assert len(verify(history)) >= 2


def test_unsealed_and_forged_first_entries_are_caught() -> None:
    history = chain(2)
    history[1].hash = None
    assert any("not sealed" in p for p in verify(history))

    forged = chain(1)
    forged[0].prev_hash = "0" * 64
    forged[0].hash = entry_hash(forged[0])
    assert verify(forged) == [
        "entry 0 (seq 1, StageEntered): the first entry ever must not have a prevHash"
    ]


def test_the_limit_drops_the_oldest_and_the_rest_still_verifies() -> None:
    history = chain(10, limit=4)
    assert [e.seq for e in history] == [7, 8, 9, 10]
    # The first retained entry points at a dropped one: that link cannot be checked, and is not.
    assert history[0].prev_hash is not None
    assert verify(history) == []
    history[0].reason = "edited after the drop"
    assert len(verify(history)) == 1


def test_a_status_round_trip_verifies() -> None:
    """Hashes are taken over the wire form, so what the apiserver stores and returns verifies,
    including a NaN measurement (stored as null)."""
    history: list[HistoryEntry] = []
    append(history, entry(0))
    nan = entry(
        1, metrics=[MetricResult(name="p99", verdict=Verdict.INCONCLUSIVE, value=float("nan"))]
    )
    append(history, nan)
    status = ModelRolloutStatus(history=history)
    reread = ModelRolloutStatus.model_validate_json(status.model_dump_json(by_alias=True))
    assert verify(reread.history) == []
    assert [e.hash for e in reread.history] == [e.hash for e in history]


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        append([], entry(0), limit=0)


def test_a_short_query_is_kept_verbatim() -> None:
    query = 'sum(rate(model_requests_total{code=~"5.."}[1m]))'
    assert compact_query(query) == query
    assert compact_query(None) is None
    assert compact_query("x" * QUERY_KEEP) == "x" * QUERY_KEEP


def test_a_long_query_keeps_its_head_length_and_digest() -> None:
    query = "sum(" + "a" * 5000 + ")"
    short = compact_query(query)
    assert short is not None and len(short) <= QUERY_KEEP
    assert short.startswith("sum(aaaa")
    digest = hashlib.sha256(query.encode()).hexdigest()
    assert short.endswith(f"... [{len(query)} chars, sha256:{digest}]")


def test_entries_store_compacted_queries_and_still_verify() -> None:
    query = "sum(" + "b" * 4000 + ")"
    history: list[HistoryEntry] = []
    given = entry(0, metrics=[MetricResult(name="big", verdict=Verdict.FAILED, query=query)])
    sealed = append(history, given)
    assert given.metrics[0].query == query  # the caller's entry is left alone
    assert sealed.metrics[0].query == compact_query(query)
    assert verify(history) == []


def test_the_byte_budget_drops_the_oldest_entries() -> None:
    """64 checks with 4 KB queries per entry: 100 entries would be ~7 MB, far above etcd's
    1.5 MiB object limit; the budget keeps the trail under it and the chain verifiable."""
    metrics = [
        MetricResult(name=f"check-{i}", verdict=Verdict.SUCCESSFUL, query="q" * 4096, value=0.1)
        for i in range(64)
    ]
    history: list[HistoryEntry] = []
    for n in range(100):
        append(history, entry(n, metrics=metrics), limit=100, max_bytes=512 * 1024)
    size = sum(len(canonical_json(e)) for e in history)
    assert size <= 512 * 1024
    assert 1 < len(history) < 100
    assert history[-1].seq == 100
    assert verify(history) == []
    status = ModelRolloutStatus(history=history)
    assert len(json.dumps(status.model_dump(mode="json", by_alias=True))) < 1024 * 1024


def test_the_newest_entry_stays_even_above_the_budget() -> None:
    history: list[HistoryEntry] = []
    append(history, entry(0), max_bytes=10)
    append(history, entry(1), max_bytes=10)
    assert [e.seq for e in history] == [2]
