"""The operator's concurrency bound: from the flag to the memo, with the documented default."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from modelrollout.app import build_memo
from modelrollout.cli.operator import build_parser
from modelrollout.handlers import MAX_CONCURRENT_RECONCILES, Memo


def test_the_flag_bounds_the_reconciles_in_flight() -> None:
    args = build_parser().parse_args(["run", "--max-concurrent-reconciles", "7"])
    memo = build_memo(
        k8s.ApiClient(),
        prometheus_url=None,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
    )
    assert memo.reconcile_slots._value == 7


def test_without_the_flag_the_documented_default_holds() -> None:
    parser = build_parser()
    args = parser.parse_args(["run"])
    memo = build_memo(
        k8s.ApiClient(),
        prometheus_url=None,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
    )
    assert memo.reconcile_slots._value == MAX_CONCURRENT_RECONCILES == Memo().reconcile_slots._value
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]  # type: ignore[union-attr]
    help_text = " ".join(run.format_help().split())
    assert f"default {MAX_CONCURRENT_RECONCILES})" in help_text


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_a_bad_bound_is_refused_with_the_flag_named(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--max-concurrent-reconciles", bad])
    assert "--max-concurrent-reconciles" in capsys.readouterr().err
