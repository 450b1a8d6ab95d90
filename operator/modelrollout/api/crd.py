"""The ModelRollout CustomResourceDefinition, generated from the pydantic models.

``python -m modelrollout.api.crd`` prints the CRD as YAML; ``crds/modelrollout.yaml`` is that
output, committed (a unit test keeps the two identical). The pydantic JSON schema is turned
into a *structural* schema: every ``$ref`` inlined, ``Optional`` collapsed to its plain type,
``title`` dropped, defaults filled in from the models (also for ``default_factory``), and
JSON-Schema-2020 exclusive bounds rewritten to the OpenAPI v3.0 form Kubernetes expects.
``spec.template`` is the one part not from the models: Kubernetes' PodTemplateSpec, generated
from its OpenAPI definition (:mod:`modelrollout.api.podtemplate_gen`), so the apiserver prunes
unknown fields there too and nothing in the object nests deeper than the schema.

Cross-field rules are added as ``x-kubernetes-validations`` (CEL). Apiservers older than 1.25
do not know that field: kubectl's client-side validation refuses a CRD containing it and the
apiserver itself would drop it. ``--no-cel`` emits the variant for such clusters (the lab runs
1.20); there the operator enforces the same rules (:mod:`modelrollout.api.validation`).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from modelrollout.api import models, podtemplate
from modelrollout.api.models import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelRolloutSpec,
    ModelRolloutStatus,
)

Schema = dict[str, Any]

SINGULAR: Final = "modelrollout"
SHORT_NAMES: Final = ("mro",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

MAX_NAME_LENGTH: Final = 52
"""Longest ModelRollout name: the Services and Deployments derived from it (``<name>-a``,
``<name>-b``, ``<name>-stable``, ``<name>-canary``) must stay DNS-1035 labels of at most 63
characters."""
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

HEADER: Final = (
    "# Generated from operator/modelrollout/api/models.py by"
    " `python -m modelrollout.api.crd{flags}`.\n"
    "# Do not edit: change the models and regenerate (a unit test compares the two).\n"
)
CEL_NOTE: Final = (
    "# Cross-field rules are CEL (x-kubernetes-validations, Kubernetes >= 1.25). Older clusters\n"
    "# (kubectl there refuses the field): install `python -m modelrollout.api.crd --no-cel`;\n"
    "# the operator enforces the same rules either way.\n"
)

PRINTER_COLUMNS: Final[list[dict[str, Any]]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Phase of the rollout."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage.name",
     "description": "Current stage."},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.weights.candidate",
     "description": "Percent of live traffic served by the candidate."},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion",
     "description": "Model version serving as stable."},
    {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateVersion",
     "description": "Model version being rolled out."},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
     "description": "What the rollout is doing or waiting for."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip

# --------------------------------------------------------------------------- CEL rules

_MAX_STAGES: Final = 20


def _ascending_weights_rule() -> str:
    # CEL has no index iteration; a literal list of every possible index stands in for it.
    indexes = ", ".join(str(i) for i in range(1, _MAX_STAGES))
    return (
        f"!has(self.stages) || [{indexes}].all(i, i >= size(self.stages) "
        "|| self.stages[i - 1].weight < self.stages[i].weight "
        "|| (self.stages[i - 1].weight == self.stages[i].weight "
        "&& self.stages[i - 1].mirror < self.stages[i].mirror))"
    )


def _at_most_rule(field: str, limit: str) -> str:
    """The duration ``self.<field>``, when set, is no longer than ``limit``."""
    return f"!has(self.{field}) || duration(self.{field}) <= duration('{limit}')"


CEL_RULES: Final[dict[str, list[dict[str, str]]]] = {
    "spec": [
        {
            "rule": _ascending_weights_rule(),
            "message": (
                "every stage must give the candidate more than the one before: a higher weight, "
                "or the same weight and a higher mirror"
            ),
        },
        {
            "rule": (
                "!has(self.stages) || size(self.stages) == 0 "
                "|| self.stages[size(self.stages) - 1].weight == 100"
            ),
            "message": "the last stage must have weight 100",
        },
        {
            "rule": (
                "!has(self.stages) || size(self.stages) == 0 "
                "|| self.stages[size(self.stages) - 1].mirror == 0"
            ),
            "message": "the last stage must not mirror traffic (mirror 0)",
        },
        {
            "rule": (
                "!has(self.trafficRouting.replicas) || !has(self.stages) "
                "|| self.stages.all(s, s.mirror == 0)"
            ),
            "message": (
                "replica-ratio routing cannot mirror traffic; use gatewayAPI or istio, "
                "or remove the shadow stage (the default stages start with one)"
            ),
        },
        {
            "rule": (
                "!has(self.analysis) || !has(self.analysis.metrics) || !has(self.stages) "
                "|| self.analysis.metrics.all(m, !has(m.stages) "
                "|| m.stages.all(n, self.stages.exists(s, s.name == n)))"
            ),
            "message": "analysis.metrics[].stages must name stages listed in spec.stages",
        },
    ],
    "spec.stages[]": [
        {
            "rule": "self.weight > 0 || self.mirror > 0",
            "message": "a stage must give the candidate traffic: weight > 0 or mirror > 0",
        },
    ],
    "spec.analysis": [
        {
            "rule": "!has(self.interval) || duration(self.interval) >= duration('1s')",
            "message": "interval must be at least 1s",
        },
        {
            "rule": (
                "!has(self.interval) || !has(self.prometheus) || !has(self.prometheus.timeout) "
                "|| duration(self.prometheus.timeout) < duration(self.interval)"
            ),
            "message": "prometheus.timeout must be shorter than interval",
        },
    ],
    "spec.analysis.metrics[]": [
        {
            "rule": "has(self.template) != has(self.query)",
            "message": "set exactly one of template and query",
        },
        {
            "rule": "!has(self.compare) || (!has(self.min) && !has(self.max))",
            "message": "a comparison check (compare) takes no min or max",
        },
        {
            "rule": "has(self.compare) || has(self.min) || has(self.max)",
            "message": "a threshold check needs min, max or both (or compare for a comparison)",
        },
        {
            "rule": "!has(self.min) || !has(self.max) || self.min < self.max",
            "message": "min must be below max",
        },
        {
            "rule": (
                "!has(self.template) || self.template != 'prediction-psi' "
                "|| (has(self.max) && !has(self.compare))"
            ),
            "message": "the prediction-psi template needs max (e.g. 0.2) and no compare",
        },
        {
            "rule": (
                "!has(self.template) || self.template != 'error-rate' "
                "|| ((!has(self.min) || (self.min >= 0.0 && self.min <= 1.0)) "
                "&& (!has(self.max) || (self.max >= 0.0 && self.max <= 1.0)))"
            ),
            "message": "error-rate is a ratio: min and max must lie between 0 and 1",
        },
    ],
    "spec.analysis.prometheus": [
        {
            "rule": _at_most_rule("timeout", models.MAX_OUTBOUND_TIMEOUT),
            "message": f"timeout must be at most {models.MAX_OUTBOUND_TIMEOUT}",
        },
    ],
    "spec.analysis.prometheus.auth": [
        {
            "rule": "!has(self.bearerToken) || (!has(self.username) && !has(self.password))",
            "message": "set bearerToken or username and password, not both",
        },
        {
            "rule": "has(self.username) == has(self.password)",
            "message": "username and password go together",
        },
    ],
    "spec.analysis.prometheus.tls": [
        {
            "rule": "!has(self.ca) || !has(self.insecureSkipVerify) || !self.insecureSkipVerify",
            "message": "set ca or insecureSkipVerify, not both",
        },
    ],
    "spec.webhooks[]": [
        {
            "rule": "has(self.url) != has(self.urlFrom)",
            "message": "set exactly one of url and urlFrom",
        },
        {
            "rule": _at_most_rule("timeout", models.MAX_OUTBOUND_TIMEOUT),
            "message": f"timeout must be at most {models.MAX_OUTBOUND_TIMEOUT}",
        },
    ],
}
"""CEL rules by schema location (``[]`` steps into list items). Every rule has a Python twin
in :mod:`modelrollout.api.validation`; a unit test evaluates both on the same manifests."""

# ----------------------------------------------------------------- structural conversion

_DROP: Final = frozenset({"title", "additionalProperties", "x-duration", "$defs"})
_KEY_ORDER: Final = (
    "description", "type", "format", "enum", "default", "minimum", "exclusiveMinimum",
    "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "minProperties", "maxProperties", "required", "properties", "items",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
)  # fmt: skip


def _ordered(node: Schema) -> Schema:
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _clean_description(text: str) -> str:
    """Docstrings to one line per paragraph, without reStructuredText literal markup."""
    paragraphs = [" ".join(p.split()) for p in text.replace("``", "").split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _model_classes() -> dict[str, type[BaseModel]]:
    return {
        name: obj
        for name, obj in vars(models).items()
        if isinstance(obj, type) and issubclass(obj, BaseModel)
    }


def _factory_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """JSON defaults of fields declared with ``default_factory``, keyed by wire name."""
    result: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is None:
            continue
        factory: Callable[[], Any] = field.default_factory  # type: ignore[assignment]
        value = factory()
        adapter: TypeAdapter[Any] = TypeAdapter(field.annotation)  # type: ignore[arg-type]
        result[field.alias or name] = adapter.dump_python(
            value, mode="json", by_alias=True, exclude_none=True
        )
    return result


class _Converter:
    def __init__(self, root: Schema, *, defaults: bool) -> None:
        self._defs: dict[str, Schema] = root.get("$defs", {})
        self._classes = _model_classes()
        self._defaults = defaults

    def convert(self, node: Schema, model_name: str | None = None) -> Schema:
        node = dict(node)
        if "$ref" in node:
            # Siblings of the reference (the field's description, default) win over the
            # referenced definition's (the class docstring).
            name = node.pop("$ref").rsplit("/", 1)[-1]
            return self.convert({**self._defs[name], **node}, name)
        if "anyOf" in node:
            # Optional[X] is X that may be omitted: no null, no nullable.
            branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
            if len(branches) != 1:
                raise ValueError(f"cannot express a union of {len(branches)} types: {branches}")
            if node.get("default", 0) is None:
                del node["default"]
            return self.convert({**branches[0], **node}, model_name)
        out: Schema = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "x-kubernetes-embedded-resource" and value is False:
                continue
            if key == "default" and (value is None or not self._defaults):
                continue
            if key == "description":
                out[key] = _clean_description(value)
            elif key == "properties":
                if value:  # the apiserver drops an empty one (ReplicaRatioRouting has none)
                    out[key] = {name: self.convert(sub) for name, sub in value.items()}
            elif key == "items":
                out[key] = self.convert(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            elif key == "const":
                out["enum"] = [value]
            else:
                out[key] = copy.deepcopy(value)
        if model_name in self._classes and self._defaults and "properties" in out:
            props = out["properties"]
            for wire_name, default in _factory_defaults(self._classes[model_name]).items():
                props[wire_name] = _ordered({"default": default, **props[wire_name]})
        return _ordered(out)


def _convert(model: type[BaseModel], *, mode: JsonSchemaMode, defaults: bool) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode=mode)
    return _Converter(raw, defaults=defaults).convert(raw, model.__name__)


def spec_schema() -> Schema:
    """The structural schema of ``spec`` (with defaults, without CEL rules). The pod template
    (a plain object to pydantic) is Kubernetes' PodTemplateSpec, generated from its OpenAPI
    definition (:mod:`modelrollout.api.podtemplate_gen`)."""
    spec = _convert(ModelRolloutSpec, mode="validation", defaults=True)
    spec["properties"]["template"] = podtemplate.template_schema()
    return spec


def status_schema() -> Schema:
    """The structural schema of ``status``: what the operator writes, without defaults."""
    return _convert(ModelRolloutStatus, mode="serialization", defaults=False)


def locate(schema: Schema, location: str) -> Schema:
    """The node at a location such as ``spec.analysis.metrics[]`` under the root schema."""
    node = schema
    for step in location.split("."):
        items = step.endswith("[]")
        node = node["properties"][step.removesuffix("[]")]
        if items:
            node = node["items"]
    return node


def iter_properties(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every property below ``schema`` with its dotted wire path (``[]`` for list items)."""
    for name, sub in schema.get("properties", {}).items():
        sub_path = f"{path}.{name}" if path else name
        yield sub_path, sub
        yield from iter_properties(sub, sub_path)
        if "items" in sub:
            yield from iter_properties(sub["items"], sub_path + "[]")


def openapi_schema(*, cel: bool = True) -> Schema:
    """The whole ``openAPIV3Schema`` of the served version."""
    spec = spec_schema()
    spec["description"] = _clean_description(ModelRolloutSpec.__doc__ or "")
    status = status_schema()
    status["description"] = _clean_description(ModelRolloutStatus.__doc__ or "")
    root: Schema = {
        "description": (
            "A ModelRollout rolls a model version out safely: shadow traffic, canary stages, "
            "SLO analysis against Prometheus, automatic rollback and an audit trail."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object.",
                "type": "string",
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this "
                "object represents.",
                "type": "string",
            },
            # The apiserver forbids anything but name/generateName rules under metadata,
            # descriptions included.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "description": (
                            f"At most {MAX_NAME_LENGTH} characters, a DNS-1035 label: the "
                            "Deployments and Services derived from it must be valid names."
                        ),
                        "type": "string",
                        "maxLength": MAX_NAME_LENGTH,
                        "pattern": NAME_PATTERN,
                    }
                },
            },
            "spec": _ordered(spec),
            "status": _ordered(status),
        },
    }
    if cel:
        for location, rules in CEL_RULES.items():
            node = locate(root, location)
            node["x-kubernetes-validations"] = copy.deepcopy(rules)
            node.update(_ordered(node))
    return root


def build_crd(*, cel: bool = True) -> Schema:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "modelrollout-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": openapi_schema(cel=cel)},
                }
            ],
        },
    }


def render(*, cel: bool = True) -> str:
    """The CRD as YAML text, with a header naming the command that produced it."""
    body = yaml.safe_dump(build_crd(cel=cel), sort_keys=False, allow_unicode=True, width=100)
    header = HEADER.format(flags="" if cel else " --no-cel") + (CEL_NOTE if cel else "")
    return header + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelrollout.api.crd",
        description="Print the ModelRollout CustomResourceDefinition generated from the models.",
    )
    parser.add_argument(
        "--no-cel",
        action="store_true",
        help="leave out x-kubernetes-validations (CEL), for apiservers older than 1.25",
    )
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render(cel=not args.no_cel)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
