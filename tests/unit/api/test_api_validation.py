"""validation.py: field problems at wire paths, and each cross-field rule (both sides of it).

The invalid manifests in tests/invalid cover each rule's rejection with a whole manifest; the
tests here pin the edges: what must still pass, how messages are phrased, and the entry points.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from modelrollout.api.models import ModelRollout, ModelRolloutSpec
from modelrollout.api.validation import (
    MAX_SPEC_BYTES,
    REPLICA_MIRROR_MESSAGE,
    InvalidModelRollout,
    Problem,
    check,
    find_problems,
    format_errors,
    parse_spec,
    validate,
)

Spec = dict[str, Any]


def _spec(**changes: Any) -> Spec:
    spec: Spec = {
        "model": {"name": "fraud", "version": "1.0.0", "uri": "s3://models/fraud/1.0.0"},
        "template": {"spec": {"containers": [{"name": "server", "image": "server:1"}]}},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
        "stages": [
            {"name": "shadow", "mirror": 100, "duration": "10m"},
            {"name": "canary-5", "weight": 5, "duration": "10m"},
            {"name": "full", "weight": 100},
        ],
        "analysis": {"metrics": [{"name": "errors", "template": "error-rate", "max": 0.01}]},
    }
    spec.update(copy.deepcopy(changes))
    return spec


def _messages(spec: Spec) -> list[str]:
    messages = validate(spec)
    assert messages == [str(p) for p in find_problems(spec)]
    return messages


def _metric(**fields: Any) -> Spec:
    return _spec(analysis={"metrics": [{"name": "m", **fields}]})


# ------------------------------------------------------------------------- valid edges

VALID: dict[str, Spec] = {
    "base": _spec(),
    "default stages with a mesh": {k: v for k, v in _spec().items() if k != "stages"},
    "equal weights with a higher mirror": _spec(stages=[
        {"name": "shadow-10", "mirror": 10}, {"name": "shadow-100", "mirror": 100},
        {"name": "full", "weight": 100}]),
    "weight and mirror together": _spec(stages=[
        {"name": "canary", "weight": 5, "mirror": 50}, {"name": "full", "weight": 100}]),
    "a single stage": _spec(stages=[{"name": "all-at-once", "weight": 100}]),
    "replica routing without mirroring": _spec(
        trafficRouting={"replicas": {}},
        stages=[{"name": "canary", "weight": 25}, {"name": "full", "weight": 100}]),
    "istio routing": _spec(trafficRouting={"istio": {"virtualService": "fraud"}}),
    "min only": _metric(template="request-rate", min=1),
    "max only": _metric(template="latency-p99", max=0.3),
    "min below max": _metric(template="latency-p99", min=0.001, max=0.3),
    "comparison on a template": _metric(template="latency-p99", compare={}),
    "comparison on a query": _metric(query="sum(up)", compare={"window": "5m", "step": "5s"}),
    "psi with max": _metric(template="prediction-psi", max=0.2, stages=["shadow"]),
    "error-rate bounds at the ends": _metric(template="error-rate", min=0, max=1),
    "metric on some stages": _metric(template="error-rate", max=0.1, stages=["canary-5", "full"]),
    "webhook from a secret": _spec(webhooks=[
        {"name": "gate", "type": "pre-rollout", "urlFrom": {"name": "hooks", "key": "gate"}}]),
    "basic auth": _spec(analysis={"prometheus": {"auth": {
        "username": {"name": "p", "key": "u"}, "password": {"name": "p", "key": "p"}}}}),
    "no metrics": _spec(analysis={}),
    "no analysis": {k: v for k, v in _spec().items() if k != "analysis"},
}  # fmt: skip


@pytest.mark.parametrize("spec", VALID.values(), ids=VALID.keys())
def test_valid_specs_have_no_problems(spec: Spec) -> None:
    assert _messages(spec) == []
    assert isinstance(check(spec), ModelRolloutSpec)


# ---------------------------------------------------------------- cross-field rules

RULES: dict[str, tuple[Spec, str]] = {
    "stage names unique": (
        _spec(stages=[{"name": "a", "weight": 5}, {"name": "a", "weight": 100}]),
        "spec.stages[1].name: duplicate stage name 'a' (also spec.stages[0])"),
    "weights never decrease": (
        _spec(stages=[{"name": "a", "weight": 50}, {"name": "b", "weight": 20},
                      {"name": "c", "weight": 100}]),
        "spec.stages[1].weight: must not be below the previous stage's weight 50 (got 20); "
        "weights never decrease"),
    "equal weight needs more mirror": (
        _spec(stages=[{"name": "a", "mirror": 50}, {"name": "b", "mirror": 50},
                      {"name": "c", "weight": 100}]),
        "spec.stages[1].weight: repeats the previous stage's weight 0 without a higher mirror "
        "(50, previous 50); every stage must give the candidate more: a higher weight, or the "
        "same weight and a higher mirror"),
    "last stage weight 100": (
        _spec(stages=[{"name": "a", "weight": 5}, {"name": "b", "weight": 99}]),
        "spec.stages[1].weight: the last stage must have weight 100 (got 99)"),
    "last stage does not mirror": (
        _spec(stages=[{"name": "a", "weight": 5}, {"name": "b", "weight": 100, "mirror": 10}]),
        "spec.stages[1].mirror: the last stage serves all traffic and must not mirror (got 10)"),
    "stage gives traffic": (
        _spec(stages=[{"name": "a"}, {"name": "b", "weight": 100}]),
        "spec.stages[0]: gives the candidate no traffic; set weight > 0 or mirror > 0"),
    "replica routing cannot mirror": (
        _spec(trafficRouting={"replicas": {}}),
        "spec.stages[0].mirror: " + REPLICA_MIRROR_MESSAGE),
    "one router": (
        _spec(trafficRouting={"gatewayAPI": {"httpRoute": "r"}, "istio": {"virtualService": "v"}}),
        "spec.trafficRouting: set exactly one of gatewayAPI, istio, replicas "
        "(got gatewayAPI and istio)"),
    "metric names unique": (
        _spec(analysis={"metrics": [{"name": "m", "template": "error-rate", "max": 0.1},
                                    {"name": "m", "template": "latency-p99", "max": 1}]}),
        "spec.analysis.metrics[1].name: duplicate check name 'm' (also spec.analysis.metrics[0])"),
    "template xor query": (
        _metric(template="error-rate", query="sum(up)", max=1),
        "spec.analysis.metrics[0]: set exactly one of template and query (both are set)"),
    "compare without bounds": (
        _metric(query="sum(up)", compare={}, min=0),
        "spec.analysis.metrics[0]: a comparison check (compare) takes no min or max; remove min "
        "and max for a comparison against the stable, or compare for a fixed bound"),
    "threshold needs a bound": (
        _metric(template="latency-p50"),
        "spec.analysis.metrics[0]: a threshold check needs min, max or both (or compare for a "
        "comparison against the stable)"),
    "min below max": (
        _metric(template="latency-p99", min=0.3, max=0.3),
        "spec.analysis.metrics[0].min: must be below max (got min 0.3, max 0.3)"),
    "psi needs max": (
        _metric(template="prediction-psi", min=0.01),
        "spec.analysis.metrics[0].max: required with the prediction-psi template (e.g. 0.2): "
        "it measures drift, bigger is worse"),
    "psi is no comparison": (
        _metric(template="prediction-psi", compare={}),
        "spec.analysis.metrics[0].compare: prediction-psi already compares candidate with "
        "stable; use max (e.g. 0.2) instead"),
    "error rate is a ratio": (
        _metric(template="error-rate", max=1.5),
        "spec.analysis.metrics[0].max: error-rate is a ratio between 0 and 1 (got 1.5); "
        "for 1.5% write 0.015"),
    "negative error rate": (
        _metric(template="error-rate", min=-0.1, max=0.1),
        "spec.analysis.metrics[0].min: error-rate is a ratio between 0 and 1 (got -0.1)"),
    "metric stages exist": (
        _metric(template="error-rate", max=0.1, stages=["canary-50"]),
        "spec.analysis.metrics[0].stages[0]: no stage named 'canary-50'; the stages are shadow, "
        "canary-5, full; did you mean 'canary-5'?"),
    "metric stages listed once": (
        _metric(template="error-rate", max=0.1, stages=["full", "full"]),
        "spec.analysis.metrics[0].stages[1]: 'full' is listed twice"),
    "compare window holds minSamples": (
        _metric(query="sum(up)", compare={"window": "1m", "step": "10s", "minSamples": 10}),
        "spec.analysis.metrics[0].compare.window: 1m at step 10s gives at most 6 samples, fewer "
        "than minSamples 10; the check could never pass"),
    "compare step at least 1s": (
        _metric(query="sum(up)", compare={"step": "500ms"}),
        "spec.analysis.metrics[0].compare.step: must be >= 1s (got 500ms)"),
    "interval at least 1s": (
        _spec(analysis={"interval": "500ms", "prometheus": {"timeout": "100ms"}}),
        "spec.analysis.interval: must be at least 1s (got 500ms)"),
    "timeout positive": (
        _spec(analysis={"prometheus": {"timeout": "0s"}}),
        "spec.analysis.prometheus.timeout: must be > 0 (got 0s)"),
    "timeout at most 30s": (
        _spec(analysis={"interval": "5m", "prometheus": {"timeout": "31s"}}),
        "spec.analysis.prometheus.timeout: must be at most 30s: the total deadline of one "
        "outbound call (got 31s)"),
    "timeout below interval": (
        _spec(analysis={"interval": "20s", "prometheus": {"timeout": "20s"}}),
        "spec.analysis.prometheus.timeout: must be shorter than spec.analysis.interval "
        "(20s; got 20s)"),
    "bearer or basic auth": (
        _spec(analysis={"prometheus": {"auth": {"bearerToken": {"name": "p", "key": "t"},
                                                "username": {"name": "p", "key": "u"},
                                                "password": {"name": "p", "key": "p"}}}}),
        "spec.analysis.prometheus.auth: set bearerToken or username and password, not both"),
    "password needs a username": (
        _spec(analysis={"prometheus": {"auth": {"password": {"name": "p", "key": "p"}}}}),
        "spec.analysis.prometheus.auth: username and password go together (username is missing)"),
    "ca or skip verify": (
        _spec(analysis={"prometheus": {"tls": {"ca": {"name": "c", "key": "ca.crt"},
                                               "insecureSkipVerify": True}}}),
        "spec.analysis.prometheus.tls: set ca or insecureSkipVerify, not both"),
    "webhook names unique": (
        _spec(webhooks=[{"name": "w", "type": "notify", "url": "http://a"},
                        {"name": "w", "type": "audit", "url": "http://b"}]),
        "spec.webhooks[1].name: duplicate webhook name 'w' (also spec.webhooks[0])"),
    "webhook url xor urlFrom": (
        _spec(webhooks=[{"name": "w", "type": "notify", "url": "http://a",
                         "urlFrom": {"name": "s", "key": "k"}}]),
        "spec.webhooks[0]: set exactly one of url and urlFrom (both are set)"),
    "webhook timeout positive": (
        _spec(webhooks=[{"name": "w", "type": "notify", "url": "http://a", "timeout": "0s"}]),
        "spec.webhooks[0].timeout: must be > 0 (got 0s)"),
    "webhook timeout at most 30s": (
        _spec(webhooks=[{"name": "w", "type": "notify", "url": "http://a", "timeout": "8784h"}]),
        "spec.webhooks[0].timeout: must be at most 30s: the total deadline of one outbound call "
        "(got 8784h)"),
    "progress deadline at least 1s": (
        _spec(progressDeadline="0s"),
        "spec.progressDeadline: must be at least 1s (got 0s)"),
    "template has a pod spec": (
        _spec(template={"metadata": {}}),
        "spec.template.spec: required: the model server's PodTemplateSpec needs a pod spec"),
    "containers have an image": (
        _spec(template={"spec": {"containers": [{"name": "server"}]}}),
        "spec.template.spec.containers[0].image: required"),
}  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), RULES.values(), ids=RULES.keys())
def test_each_rule_reports_a_specific_problem(spec: Spec, expected: str) -> None:
    assert _messages(spec) == [expected]


def test_replica_routing_with_default_stages_says_where_the_shadow_stage_comes_from() -> None:
    spec = {k: v for k, v in _spec(trafficRouting={"replicas": {}}).items() if k != "stages"}
    [message] = _messages(spec)
    assert message.startswith("spec.stages[0].mirror: " + REPLICA_MIRROR_MESSAGE)
    assert "spec.stages is omitted and the default stages start with a shadow stage" in message


def test_all_problems_are_reported_at_once() -> None:
    spec = _spec(stages=[{"name": "a", "weight": 50}, {"name": "a", "weight": 20}],
                 trafficRouting={})  # fmt: skip
    assert _messages(spec) == [
        "spec.trafficRouting: set exactly one of gatewayAPI, istio, replicas (none is set)",
        "spec.stages[1].name: duplicate stage name 'a' (also spec.stages[0])",
        "spec.stages[1].weight: must not be below the previous stage's weight 50 (got 20); "
        "weights never decrease",
        "spec.stages[1].weight: the last stage must have weight 100 (got 20)",
    ]


# --------------------------------------------------------- field problems (parsing)

FIELD_PROBLEMS: dict[str, tuple[Callable[[Spec], None], str]] = {
    "bound with the value": (
        lambda s: s["stages"][1].update(weight=150),
        "spec.stages[1].weight: must be <= 100 (got 150)"),
    "camelCase path": (
        lambda s: s["analysis"].update(failureLimit=-1),
        "spec.analysis.failureLimit: must be >= 0 (got -1)"),
    "missing field": (
        lambda s: s["model"].pop("uri"),
        "spec.model.uri: required"),
    "empty string": (
        lambda s: s["model"].update(name=""),
        "spec.model.name: must not be empty"),
    "typo with a suggestion": (
        lambda s: s["analysis"]["metrics"][0].update(tempalte="error-rate"),
        "spec.analysis.metrics[0].tempalte: unknown field; did you mean 'template'?"),
    "snake_case is not the wire form": (
        lambda s: s.update(progress_deadline="5m"),
        "spec.progress_deadline: unknown field; did you mean 'progressDeadline'?"),
    "no coercion of strings to numbers": (
        lambda s: s.update(replicas="3"),
        "spec.replicas: must be an integer (got \"3\", a string)"),
    "no coercion of floats to integers": (
        lambda s: s["stages"][1].update(weight=5.5),
        "spec.stages[1].weight: must be an integer (got 5.5, a number)"),
    "unquoted version": (
        lambda s: s["model"].update(version=1.1),
        "spec.model.version: must be a string (got 1.1, a number); quote it in YAML"),
    "enum": (
        lambda s: s["analysis"].update(onInconclusive="Ignore"),
        "spec.analysis.onInconclusive: must be one of 'Hold' or 'Rollback' (got \"Ignore\")"),
    "duration": (
        lambda s: s["stages"][0].update(duration="1 hour"),
        "spec.stages[0].duration: must be a duration such as 30s, 5m or 1h30m (got \"1 hour\")"),
    "exclusive bound": (
        lambda s: s["analysis"]["metrics"][0].update(max=None, compare={"confidence": 1.0},
                                                     template="latency-p99"),
        "spec.analysis.metrics[0].compare.confidence: must be < 1.0 (got 1.0)"),
    "list length": (
        lambda s: s.update(webhooks=[{"name": f"w{i}", "type": "notify", "url": "http://a"}
                                     for i in range(17)]),
        "spec.webhooks: must have at most 16 items (got 17)"),
    "wrong container type": (
        lambda s: s.update(stages={"name": "a"}),
        "spec.stages: must be a list (got {\"name\": \"a\"}, an object)"),
    "long string": (
        lambda s: s["stages"][0].update(name="a" * 64),
        "spec.stages[0].name: must be at most 63 characters long (got 64)"),
}  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), FIELD_PROBLEMS.values(), ids=FIELD_PROBLEMS.keys())
def test_field_problems_name_the_wire_path(change: Callable[[Spec], None], expected: str) -> None:
    spec = _spec()
    change(spec)
    assert expected in _messages(spec)
    with pytest.raises(InvalidModelRollout) as raised:
        parse_spec(spec)
    assert expected in [str(p) for p in raised.value.problems]


def test_format_errors_phrases_a_lax_parse_the_same_way() -> None:
    """The reconciler parses objects from the apiserver with model_validate (lax)."""
    spec = _spec()
    spec["stages"][1]["weight"] = 150
    with pytest.raises(ValidationError) as raised:
        ModelRolloutSpec.model_validate(spec)
    assert format_errors(raised.value) == ["spec.stages[1].weight: must be <= 100 (got 150)"]


def test_enormous_specs_are_refused_before_parsing() -> None:
    spec = _spec(template={"metadata": {"annotations": {"blob": "x" * MAX_SPEC_BYTES}},
                           "spec": {"containers": [{"name": "s", "image": "i"}]}})  # fmt: skip
    size = len(json.dumps(spec, separators=(",", ":")))
    [problem] = find_problems(spec)
    assert problem.path == "spec"
    assert problem.message.startswith(f"is {size} bytes as JSON, more than the {MAX_SPEC_BYTES}")


# ------------------------------------------------------------------------ entry points


def test_validate_takes_a_whole_manifest() -> None:
    manifest = {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
                "metadata": {"name": "fraud"}, "spec": _spec()}  # fmt: skip
    assert validate(manifest) == []
    wrong = {**manifest, "apiVersion": "modelrollout.dev/v1", "kind": "Rollout", "sepc": {}}
    assert validate(wrong) == [
        "sepc: unknown field; did you mean 'spec'?",
        'apiVersion: must be modelrollout.dev/v1alpha1 (got "modelrollout.dev/v1")',
        'kind: must be ModelRollout (got "Rollout")',
    ]
    assert validate({"kind": "ModelRollout", "metadata": {"name": "x"}}) == [
        "spec: required: an object (missing)"
    ]


def test_validate_takes_parsed_models() -> None:
    rollout = ModelRollout.model_validate(
        {"metadata": {"name": "Fraud"}, "spec": _spec(stages=[{"name": "a", "weight": 5}])}
    )
    assert validate(rollout) == [
        "metadata.name: must be a DNS-1035 label: lowercase letters, digits and '-', starting "
        'with a letter and ending with a letter or digit (got "Fraud")',
        "spec.stages[0].weight: the last stage must have weight 100 (got 5)",
    ]
    assert validate(rollout.spec) == [
        "spec.stages[0].weight: the last stage must have weight 100 (got 5)"
    ]


def test_check_returns_the_parsed_spec_or_raises_with_every_problem() -> None:
    assert check(_spec()).stages[0].name == "shadow"
    with pytest.raises(InvalidModelRollout) as raised:
        check(_spec(stages=[{"name": "a", "weight": 5}], trafficRouting={}))
    assert raised.value.problems == (
        Problem("spec.trafficRouting", "set exactly one of gatewayAPI, istio, replicas "
                "(none is set)"),
        Problem("spec.stages[0].weight", "the last stage must have weight 100 (got 5)"),
    )  # fmt: skip
    assert str(raised.value).startswith("spec.trafficRouting: set exactly one")
    with pytest.raises(InvalidModelRollout, match="expected a ModelRollout object"):
        check(["not", "a", "mapping"])  # type: ignore[arg-type]
