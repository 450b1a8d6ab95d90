"""A tiny round of the benchmark (``python -m bench.run``) on the shared lab, so it cannot rot.

Five rollouts, one of them breached, short stages: the same code path as ``make bench`` at
N=1000 (exporter, Prometheus target, watches, history-based figures, apiserver and operator
metrics, the result files), in well under a minute. It checks the figures are there and sane,
not how fast anything is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.run import Config, Round, write_results
from e2e.lab.controlplane import Lab

pytestmark = pytest.mark.lab


def test_a_small_benchmark_round_produces_every_figure(crd: Lab, tmp_path: Path) -> None:
    cfg = Config(
        sizes=(5,), interval_s=2, stage_s=4, breach_fraction=0.2, out_dir=tmp_path, workers=4
    )
    result = Round(crd, 5, cfg).run()

    assert result["outcome"] == {"RolledBack": 1, "Succeeded": 4}, result["outcome"]
    # 4 promoted rollouts x (canary-10 -> canary-50 -> full -> promoted)
    assert result["transitions"] == 12
    for field in ("transition_lag_p50_s", "transition_lag_p99_s", "route_lag_p99_s"):
        value = result[field]
        assert value is not None and math.isfinite(value) and value >= -0.05, (field, value)
    assert result["breach_to_rollback_measured"] == 1
    assert 0 < result["breach_to_rollback_p50_s"] < 60
    assert result["operator_rss_mib_peak"] > 30
    assert result["operator_cpu_seconds"] > 0
    writes = result["apiserver_writes"]
    # Every stage change writes the status; the promotions and the rollback write routes.
    assert writes["rollout status"] >= result["stage_changes"] > 0, writes
    assert writes["routes"] >= 4 * 4, writes
    # One status write records each stage change; the Deployment and Service writes come on top.
    status_and_route = result["apiserver_status_and_route_writes_per_rollout_stage"]
    assert 1.0 < status_and_route < result["apiserver_writes_per_rollout_stage"], result
    assert result["prometheus_queries"] > 0
    # the bench's check plus the built-in traffic-split's two request counts (issue 27 batches)
    assert 0 < result["prometheus_queries_per_rollout_interval"] <= 4

    json_path, md_path = write_results(cfg, [result], "shared")
    doc = json.loads(json_path.read_text())
    assert doc["results"][0]["rollouts"] == 5
    assert set(doc["results"][0]["targets"]) == {
        "transition lag p99",
        "breach to rollback p99",
        "operator peak RSS",
        "apiserver writes per stage change",
        "apiserver writes per stage change, status and route only",
    }
    table = md_path.read_text()
    assert "| 5 |" in table and "Targets (issue 11)" in table
