"""Malformed and hostile ModelRollouts, and what must become of each.

Names: each case's rollout (and its HTTPRoute, on the lab) is named after the case. The lab's
routes have two rules: rule 0 for the rollout, rule 1 the user's own (to Service legacy-scorer).

tests/invalid (50 manifests, tests/invalid/expected.yaml) covers the everyday mistakes: a missing
field, a misspelt one, an out-of-range weight, duplicate names, the cross-field rules. This
table adds the hostile and the absurd: type confusion, PromQL injection in every name a query
could see, unicode, enormous specs, durations that overflow a clock, a wrong apiVersion or kind,
routes and Secrets that do not exist, a pod template the apiserver refuses, and input that is
hostile but harmless (accepted, and it must work).

Each case says where it must stop:

- ``apiserver``: text of the lab apiserver's refusal (Kubernetes 1.20, the CRD without CEL);
- ``operator``: text of the problem :func:`modelrollout.api.validation.validate` reports; on the
  lab the operator marks the rollout InvalidSpec (Stalled condition, Warning Event) with it;
- ``runtime``: a spec that is valid on paper but cannot run (a missing route or Secret, a pod
  template the apiserver refuses): text of the Stalled condition the operator sets, with
  ``reason`` (the condition's reason and the Warning Event's); ``rollout`` says whether a second
  version must be rolled out to get there (analysis and gates only run during a rollout);
- none of them: accepted everywhere and it must work like any other rollout.

Used by tests/unit/test_bad_input.py (validate(), the CRD schema offline) and
e2e/faults/test_bad_input_lab.py (the real apiserver and a running operator).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INJECTION = 'a"} or vector(1) or {x="'
"""Closes a label matcher and adds PromQL of its own, if it were pasted into a query unescaped."""

Manifest = dict[str, Any]


def base(name: str) -> Manifest:
    """A valid ModelRollout; its route (an HTTPRoute named like the rollout) is created by the
    lab test for the cases that get stored."""
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "breast-cancer", "version": "1.0.0", "uri": "s3://models/bc/1.0.0"},
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "server", "image": "ghcr.io/example/sklearn-server:1.0"}
                    ]
                }
            },
            "trafficRouting": {"gatewayAPI": {"httpRoute": name}},
            "stages": [
                {"name": "shadow", "mirror": 100, "duration": "2s"},
                {"name": "canary", "weight": 50, "duration": "2s"},
                {"name": "full", "weight": 100},
            ],
            "analysis": {
                "interval": "2s",
                "errorLimit": 1,
                "inconclusiveLimit": 1,
                "metrics": [{"name": "errors", "template": "error-rate", "max": 0.05}],
            },
            "progressDeadline": "2m",
        },
    }


@dataclass(frozen=True)
class Case:
    id: str
    why: str
    edit: Callable[[Manifest], None]
    apiserver: str | None = None
    operator: str | None = None
    runtime: str | None = None
    reason: str = "InvalidSpec"
    rollout: bool = False
    route: bool = True

    def manifest(self) -> Manifest:
        body = copy.deepcopy(base(self.id))
        self.edit(body)
        return body

    @property
    def stored(self) -> bool:
        """The apiserver accepts it (the operator has to deal with it)."""
        return self.apiserver is None


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """An edit setting ``path`` (dots, and [i] for list items) to ``value``."""

    def edit(body: Manifest) -> None:
        node: Any = body
        parts = path.replace("[", ".[").split(".")
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value

    return edit


def _drop(path: str) -> Callable[[Manifest], None]:
    """An edit removing ``path`` (dots, and .[i] for list items)."""

    def edit(body: Manifest) -> None:
        node: Any = body
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        del node[parts[-1]]

    return edit


def _metrics(count: int) -> Callable[[Manifest], None]:
    def edit(body: Manifest) -> None:
        body["spec"]["analysis"]["metrics"] = [
            {"name": f"m{i}", "template": "error-rate", "max": 0.05} for i in range(count)
        ]

    return edit


def _query(query: str) -> Callable[[Manifest], None]:
    return _set("spec.analysis.metrics", [{"name": "custom", "query": query, "max": 1}])


def _big_template(size: int) -> Callable[[Manifest], None]:
    def edit(body: Manifest) -> None:
        body["spec"]["template"]["metadata"] = {"annotations": {"example.com/blob": "x" * size}}

    return edit


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _prometheus_auth(secret: str, key: str) -> Callable[[Manifest], None]:
    return _set(
        "spec.analysis.prometheus",
        {"auth": {"bearerToken": {"name": secret, "key": key}}},
    )


def _both(*edits: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def edit(body: Manifest) -> None:
        for one in edits:
            one(body)

    return edit


CASES: list[Case] = [
    # -- type confusion -----------------------------------------------------------------
    Case(
        "replicas-string",
        "a number as a string",
        _set("spec.replicas", "3"),
        apiserver='spec.replicas in body must be of type integer: "string"',
        operator='spec.replicas: must be an integer (got "3", a string)',
    ),
    Case(
        "replicas-float",
        "a fraction where an integer goes",
        _set("spec.replicas", 1.5),
        apiserver='spec.replicas in body must be of type integer: "number"',
        operator="spec.replicas: must be an integer (got 1.5, a number)",
    ),
    Case(
        "replicas-huge",
        "a number beyond any cluster",
        _set("spec.replicas", 10**15),
        apiserver="spec.replicas in body should be less than or equal to 1000",
        operator="spec.replicas: must be <= 1000 (got 1000000000000000)",
    ),
    Case(
        "weight-boolean",
        "true as a weight",
        _set("spec.stages[1].weight", True),
        apiserver='spec.stages.weight in body must be of type integer: "boolean"',
        operator="spec.stages[1].weight: must be an integer (got true, a boolean)",
    ),
    Case(
        "weight-negative",
        "a negative weight",
        _set("spec.stages[1].weight", -50),
        apiserver="spec.stages.weight in body should be greater than or equal to 0",
        operator="spec.stages[1].weight: must be >= 0 (got -50)",
    ),
    Case(
        "mirror-over-100",
        "mirroring more than all traffic",
        _set("spec.stages[0].mirror", 1000),
        apiserver="spec.stages.mirror in body should be less than or equal to 100",
        operator="spec.stages[0].mirror: must be <= 100 (got 1000)",
    ),
    Case(
        "stages-object",
        "an object where the list of stages goes",
        _set("spec.stages", {"shadow": {"mirror": 100}}),
        apiserver='spec.stages in body must be of type array: "object"',
        operator="spec.stages: must be a list",
    ),
    Case(
        "analysis-list",
        "a list where an object goes",
        _set("spec.analysis", [{"interval": "2s"}]),
        apiserver='spec.analysis in body must be of type object: "array"',
        operator="spec.analysis: must be an object",
    ),
    Case(
        "template-string",
        "a pod template that is a string",
        _set("spec.template", "nginx:latest"),
        apiserver='spec.template in body must be of type object: "string"',
        operator='spec.template: must be an object (got "nginx:latest", a string)',
    ),
    Case(
        "model-null",
        "null where the model goes",
        _set("spec.model", None),
        apiserver="spec.model: Required value",
        operator="spec.model: must be an object (got null, null)",
    ),
    Case(
        "threshold-string",
        "a bound given as text",
        _set("spec.analysis.metrics[0].max", "1%"),
        apiserver='spec.analysis.metrics.max in body must be of type number: "string"',
        operator='spec.analysis.metrics[0].max: must be a number (got "1%", a string)',
    ),
    # -- PromQL injection ---------------------------------------------------------------
    Case(
        "inject-stage-name",
        "a stage name that would close a label matcher",
        _set("spec.stages[1].name", INJECTION),
        apiserver="spec.stages.name in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        operator="spec.stages[1].name: must be a DNS label",
    ),
    Case(
        "inject-metric-name",
        "a check name that would close a label matcher",
        _set("spec.analysis.metrics[0].name", INJECTION),
        apiserver=(
            "spec.analysis.metrics.name in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
        ),
        operator="spec.analysis.metrics[0].name: must be a DNS label",
    ),
    Case(
        "inject-version",
        "a model version (a query variable) that would close a label matcher",
        _set("spec.model.version", "1.0" + INJECTION),
        apiserver="spec.model.version in body should match",
        operator="spec.model.version: must start with a letter or digit",
    ),
    Case(
        "inject-rollout-name",
        "a rollout name (a query variable) that would close a label matcher",
        _set("metadata.name", "x" + INJECTION),
        apiserver="metadata.name: Invalid value",
        operator="metadata.name: must be a DNS-1035 label",
    ),
    Case(
        "inject-label",
        "a label value that would close a label matcher",
        _set("metadata.labels", {"team": INJECTION}),
        apiserver="metadata.labels: Invalid value",
    ),
    Case(
        "inject-stage-list",
        "an injected stage name in a check's stage list",
        _set("spec.analysis.metrics[0].stages", [INJECTION]),
        apiserver="spec.analysis.metrics.stages in body should match",
        operator="spec.analysis.metrics[0].stages[0]: must be a DNS label",
    ),
    Case(
        "query-variable-unquoted",
        "a variable pasted into PromQL code, outside any string",
        _query("sum(rate(model_requests_total[1m])) or {{ version }}"),
        operator=(
            "spec.analysis.metrics[0].query: variable {{ version }} must be used inside a "
            "double-quoted label value"
        ),
    ),
    Case(
        "query-unknown-variable",
        "a variable the operator does not know (e.g. fishing for a Secret)",
        _query('up{token="{{ secret }}"}'),
        operator="spec.analysis.metrics[0].query: unknown variable {{ secret }} in query",
    ),
    Case(
        "inject-model-name",
        "the model name is never a query variable: an injection there is inert",
        _set("spec.model.name", INJECTION),
    ),
    # -- unicode ------------------------------------------------------------------------
    Case(
        "unicode-stage-name",
        "a stage name with an accent",
        _set("spec.stages[1].name", "canari-été"),
        apiserver="spec.stages.name in body should match",
        operator="spec.stages[1].name: must be a DNS label",
    ),
    Case(
        "unicode-rollout-name",
        "a rollout name with a letter outside ASCII",
        _set("metadata.name", "modèle"),
        apiserver="metadata.name: Invalid value",
        operator="metadata.name: must be a DNS-1035 label",
    ),
    Case(
        "unicode-version",
        "a version with a Greek letter",
        _set("spec.model.version", "2.0.0-β"),
        apiserver="spec.model.version in body should match",
        operator="spec.model.version: must start with a letter or digit",
    ),
    Case(
        "unicode-homoglyph-route",
        "a route name with a Cyrillic o (U+043E): it looks like another route",
        _set("spec.trafficRouting.gatewayAPI.httpRoute", "unicode-hom\u043eglyph-route"),
        runtime="not found",
        reason="RoutingError",
    ),
    Case(
        "unicode-model-name",
        "a model name in any script is only a label and an env value",
        _set("spec.model.name", "模型-🚀-détecteur"),
    ),
    # -- enormous -----------------------------------------------------------------------
    Case(
        "huge-template",
        "a 1 MB pod template",
        _big_template(1_000_000),
        operator="bytes as JSON, more than the 262144 allowed",
    ),
    Case(
        "huge-metric-list",
        "10,000 checks",
        _metrics(10_000),
        apiserver="spec.analysis.metrics in body should have at most 64 items",
        operator="bytes as JSON, more than the 262144 allowed",
    ),
    Case(
        "huge-query",
        "a 5,000-character query",
        _query('up{job="' + "x" * 5000 + '"}'),
        apiserver="spec.analysis.metrics.query in body should be at most 4096 chars long",
        operator="spec.analysis.metrics[0].query: must be at most 4096 characters long",
    ),
    Case(
        "huge-uri",
        "a 3,000-character model URI",
        _set("spec.model.uri", "s3://models/" + "x" * 3000),
        apiserver="spec.model.uri in body should be at most 2048 chars long",
        operator="spec.model.uri: must be at most 2048 characters long",
    ),
    Case(
        "huge-webhook-list",
        "100 webhooks",
        _set(
            "spec.webhooks",
            [{"name": f"w{i}", "type": "notify", "url": "https://example.com"} for i in range(100)],
        ),
        apiserver="spec.webhooks in body should have at most 16 items",
        operator="spec.webhooks: must have at most 16 items (got 100)",
    ),
    Case(
        "duration-overflow",
        "a stage lasting 11,000 years: the clock would run past the year 9999",
        _set("spec.stages[0].duration", "99999999h"),
        operator="spec.stages[0].duration: '99999999h' is longer than the 8784h (366 days) allowed",
    ),
    Case(
        "deadline-overflow",
        "a progress deadline past the year 9999",
        _set("spec.progressDeadline", "99999999h"),
        operator="spec.progressDeadline: '99999999h' is longer than the 8784h (366 days) allowed",
    ),
    Case(
        "duration-out-of-range",
        "a duration no clock can hold",
        _set("spec.analysis.interval", "99999999999999h"),
        operator="spec.analysis.interval: '99999999999999h' is not a duration",
    ),
    Case(
        "threshold-infinite",
        "a bound of 1e309 (infinity once parsed)",
        _set("spec.analysis.metrics[0].max", 10**309),
        apiserver="cannot be handled as a ModelRollout",
        operator="spec.analysis.metrics[0].max: error-rate is a ratio between 0 and 1 (got inf)",
    ),
    # -- wrong identity -----------------------------------------------------------------
    Case(
        "wrong-api-version",
        "a version of the API that does not exist",
        _set("apiVersion", "modelrollout.dev/v1"),
        apiserver="404",
        operator="apiVersion: must be modelrollout.dev/v1alpha1",
    ),
    Case(
        "wrong-group",
        "someone else's group with our kind",
        _set("apiVersion", "argoproj.io/v1alpha1"),
        apiserver="404",
        operator="apiVersion: must be modelrollout.dev/v1alpha1",
    ),
    Case(
        "wrong-kind",
        "the right endpoint, another kind in the body",
        _set("kind", "Rollout"),
        apiserver="Rollout",
        operator="kind: must be ModelRollout",
    ),
    # -- things that do not exist or cannot run -----------------------------------------
    Case(
        "route-missing",
        "an HTTPRoute that does not exist",
        _set("spec.trafficRouting.gatewayAPI.httpRoute", "no-such-route"),
        runtime="not found",
        reason="RoutingError",
    ),
    Case(
        "route-rule-missing",
        "a rule index beyond the route's rules",
        _set("spec.trafficRouting.gatewayAPI.ruleIndex", 9),
        runtime="has 2 rule(s) but spec.trafficRouting.gatewayAPI.ruleIndex is 9",
        reason="RoutingError",
    ),
    Case(
        "route-rule-foreign",
        "a managed rule that already sends traffic to someone else's Service",
        _set("spec.trafficRouting.gatewayAPI.ruleIndex", 1),
        runtime="which the operator does not manage",
        reason="RoutingError",
    ),
    Case(
        "virtualservice-missing",
        "an Istio VirtualService that does not exist",
        _set("spec.trafficRouting", {"istio": {"virtualService": "no-such-vs"}}),
        runtime="not found",
        reason="RoutingError",
        route=False,
    ),
    Case(
        "secret-missing",
        "Prometheus credentials from a Secret that does not exist",
        _prometheus_auth("no-such-secret", "token"),
        runtime='Secret "no-such-secret" not found',
        reason="AnalysisError",
        rollout=True,
    ),
    Case(
        "secret-key-missing",
        "a Secret without the key named",
        _prometheus_auth("prom-auth", "no-such-key"),
        runtime='Secret "prom-auth" has no key "no-such-key"',
        reason="AnalysisError",
        rollout=True,
    ),
    Case(
        "pod-template-invalid",
        "a container name the apiserver refuses in a Deployment",
        _set("spec.template.spec.containers[0].name", "Model_Server"),
        runtime="spec.template: the apiserver refused Deployment pod-template-invalid-a",
    ),
    Case(
        "pod-template-bad-port",
        "a container port the apiserver refuses",
        _set("spec.template.spec.containers[0].ports", [{"containerPort": 70000}]),
        runtime="spec.template: the apiserver refused Deployment pod-template-bad-port-a",
    ),
    Case(
        "template-unknown-deep-field",
        "a field the pod template does not have, nested 20 levels: the apiserver drops it",
        _set("spec.template.spec.madeUp", _deep(20)),
    ),
    Case(
        "container-without-image",
        "a container without an image",
        _drop("spec.template.spec.containers.[0].image"),
        operator="spec.template.spec.containers[0].image: required",
    ),
    Case(
        "webhook-url-secret-missing",
        "a gate whose URL comes from a Secret that does not exist",
        _both(
            _set(
                "spec.webhooks",
                [
                    {
                        "name": "approve",
                        "type": "pre-rollout",
                        "urlFrom": {"name": "no-such-secret", "key": "url"},
                    }
                ],
            ),
            _set("spec.analysis.metrics", []),
        ),
        runtime="gate approve",
        reason="GateTimeout",
        rollout=True,
    ),
]
