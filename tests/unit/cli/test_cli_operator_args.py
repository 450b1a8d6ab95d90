"""The operator's flags: the concurrency bound (from the flag to the memo, with the documented
default) and the liveness limits."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from modelrollout.app import build_memo
from modelrollout.cli.operator import build_parser, limits_from
from modelrollout.handlers import MAX_CONCURRENT_RECONCILES, Memo
from modelrollout.health import Limits


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


def test_the_liveness_limits_default_to_the_documented_ones_and_refuse_negatives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert limits_from(build_parser().parse_args(["run"])) == Limits()
    args = build_parser().parse_args(
        ["run", "--liveness-watch-down", "7.5", "--liveness-exit-after", "0"]
    )
    assert (limits_from(args).watch_down_s, limits_from(args).exit_after_s) == (7.5, 0.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--liveness-loop-stall", "-1"])
    assert "must not be negative" in capsys.readouterr().err
