"""The profile summary that docs/performance.md quotes."""

from __future__ import annotations

from bench.profile import summarise

PROFILE = "\n".join(
    [
        "process 1;thread 2;run (a/operator.py:1);Reconciler.reconcile (m/reconciler.py:2);"
        "decide (m/engine/machine.py:3);working_copy (m/engine/machine.py:4) 6",
        "process 1;thread 2;run (a/operator.py:1);Reconciler.reconcile (m/reconciler.py:2);"
        "_parse_status (m/reconciler.py:5) 3",
        "process 1;thread 2;run (a/operator.py:1);Reconciler.reconcile (m/reconciler.py:2) 1",
        "process 1;thread 3;watcher (kopf/watching.py:9);loads (json/__init__.py:1) 10",
    ]
)


def test_a_breakdown_splits_a_function_by_what_it_calls() -> None:
    text = summarise(PROFILE, breakdowns=("Reconciler.reconcile", "watcher", "absent"))
    section = text.split("Reconciler.reconcile: 50.0% in all, by callee (20 samples)\n")[1]
    rows = section.split("\n\n")[0].splitlines()
    assert rows == [
        "  30.0%  decide (machine.py)",
        "  15.0%  _parse_status (reconciler.py)",
        "   5.0%  (own time)",
    ]
    assert "watcher: 50.0% in all" in text
    assert "absent" not in text  # never sampled: no empty table


def test_own_and_inclusive_tables_count_each_sample_once() -> None:
    text = summarise(PROFILE)
    assert "  50.0%  loads (__init__.py)" in text  # own time
    assert "  50.0%  Reconciler.reconcile (reconciler.py)" in text  # inclusive
    assert summarise("") == "no samples\n"
