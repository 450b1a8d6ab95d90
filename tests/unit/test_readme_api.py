"""The README's "The ModelRollout API in brief" and "Operations" promise names and defaults
that users type or scrape: the default stages, the built-in check templates, the webhook
types, the phases, the operator's metric names and its /metrics port."""

from __future__ import annotations

import pytest

from modelrollout.api.models import MetricTemplate, ModelRolloutSpec, Phase, WebhookType
from modelrollout.cli.operator import build_parser
from modelrollout.metrics.analysis import BUILTIN_QUERIES
from modelrollout.metrics.templates import template_variables
from modelrollout.observability import OperatorMetrics

MINIMAL = {
    "model": {"name": "fraud", "version": "1.0.0", "uri": "s3://models/fraud/1.0.0"},
    "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}},
    "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
}


def test_the_default_stages_are_shadow_10m_canary_5_10m_canary_25_20m_then_full() -> None:
    spec = ModelRolloutSpec.model_validate(MINIMAL)

    got = [(s.name, s.weight, s.mirror, s.duration) for s in spec.stages]
    assert got == [
        ("shadow", 0, 100, "10m"),
        ("canary-5", 5, 0, "10m"),
        ("canary-25", 25, 0, "20m"),
        ("full", 100, 0, None),
    ]


@pytest.mark.parametrize(
    "template",
    ["error-rate", "latency-p50", "latency-p95", "latency-p99", "request-rate", "prediction-psi"],
)
def test_each_builtin_template_the_readme_names_is_accepted_and_has_a_query(template: str) -> None:
    check = {"name": "c", "template": template, "max": 0.5}
    spec = ModelRolloutSpec.model_validate({**MINIMAL, "analysis": {"metrics": [check]}})

    assert spec.analysis.metrics[0].template is MetricTemplate(template)
    assert "target" in template_variables(BUILTIN_QUERIES[MetricTemplate(template)])


def test_the_webhook_types_and_phases_are_the_readmes() -> None:
    assert {t.value for t in WebhookType} == {"pre-rollout", "confirm-promotion", "notify", "audit"}
    assert [p.value for p in Phase] == [
        "Idle",
        "Progressing",
        "Paused",
        "Promoting",
        "Succeeded",
        "RolledBack",
        "Failed",
    ]


def test_the_operator_exposes_the_metrics_the_readme_names() -> None:
    m = OperatorMetrics()
    m.reconcile_started("route")
    text = m.exposition().decode()

    for family in (
        "modelrollout_stage_transitions_total",
        "modelrollout_analysis_verdicts_total",
        "modelrollout_rollbacks_total",
        "modelrollout_reconcile_duration_seconds",
        "modelrollout_prometheus_query_duration_seconds",
        "modelrollout_reconcile_queue_seconds",  # the wait for a reconcile slot
    ):
        assert f"# TYPE {family} " in text, family
    assert 'modelrollout_reconciles_total{trigger="route"} 1.0' in text


def test_metrics_and_healthz_are_served_on_port_8081_by_default() -> None:
    args = build_parser().parse_args(["run"])
    assert args.metrics_port == 8081
    assert args.history_limit == 100  # docs/performance.md: the default --history-limit
