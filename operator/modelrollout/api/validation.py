"""Validation of ModelRollout objects beyond what the pydantic models check field by field.

Everything is reported as :class:`Problem` objects (or their text) naming the offending field
in its camelCase wire form: ``spec.stages[1].weight: must be <= 100 (got 150)``.

* :func:`parse_spec`, :func:`problems_from_pydantic`, :func:`format_errors`: the per-field
  constraints of the models (the ones the CRD's structural schema enforces); parse_spec parses
  strictly like the apiserver (no string-to-number coercion, no snake_case field names).
* :func:`validate` (messages) and :func:`find_problems` (typed): the above for manifests, plus
  the cross-field rules. Apiservers >= 1.25 enforce those too, as CEL
  (:data:`modelrollout.api.crd.CEL_RULES`); older ones such as the lab's 1.20 do not, so the
  operator enforces every rule here.
* :func:`check`: both, raising :class:`InvalidModelRollout` with every problem found.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from modelrollout.api import crd
from modelrollout.api.models import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    KIND,
    MAX_OUTBOUND_TIMEOUT,
    AnalysisSpec,
    MetricCheck,
    MetricTemplate,
    ModelRollout,
    ModelRolloutSpec,
    PrometheusSpec,
    WebhookSpec,
    parse_duration,
)
from modelrollout.metrics.templates import TemplateError, validate_query

MAX_SPEC_BYTES: Final = 256 * 1024
"""Largest spec accepted, as compact JSON: the object, its status and audit history together
must stay well below etcd's 1.5 MiB request limit."""

MAX_SPEC_DEPTH: Final = 32
"""Deepest nesting of objects and lists accepted in a spec (the spec itself is level 1). The
CRD's schema goes 12 levels deep and the apiserver prunes the rest; a deeper spec can only come
from a cluster with an older CRD (whose pod template was free-form), and would make recursive
code (JSON encoders, deep copies) fail on every reconcile instead of being reported."""

MIN_INTERVAL: Final = timedelta(seconds=1)
OUTBOUND_TIMEOUT_HINT: Final = (
    f"must be at most {MAX_OUTBOUND_TIMEOUT}: the total deadline of one outbound call"
)
TOP_LEVEL_FIELDS: Final = ("apiVersion", "kind", "metadata", "spec", "status")
ROUTERS: Final = ("gatewayAPI", "istio", "replicas")

REPLICA_MIRROR_MESSAGE: Final = (
    "replica-ratio routing cannot mirror traffic; use gatewayAPI or istio, "
    "or remove the shadow stage"
)
"""Our documented choice: without a proxy there is nothing that could copy requests."""

_PATTERN_HINTS: Final = {
    DNS_LABEL_PATTERN: (
        "must be a DNS label: lowercase letters, digits and '-', starting and ending with a "
        "letter or digit"
    ),
    crd.NAME_PATTERN: (
        "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter "
        "and ending with a letter or digit"
    ),
    r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$": "must be a duration such as 30s, 5m or 1h30m",
    r"^https?://[^\s]+$": "must be an http:// or https:// URL without spaces",
    r"^[a-z0-9]+:[A-Fa-f0-9]{16,128}$": "must be a digest such as sha256:<hex>",
    r"^[A-Za-z0-9][A-Za-z0-9._+-]*$": (
        "must start with a letter or digit and contain only letters, digits and . _ + -"
    ),
}

_TYPE_NAMES: Final = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest, at a wire path such as ``spec.stages[1].weight``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidModelRollout(ValueError):
    """A ModelRollout that must not be acted on; ``problems`` says why, field by field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- parsing


def _format_path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _show(value: Any) -> str:
    if deeper_than(value, 4):
        return _kind_of(value)  # too big to quote (and maybe too deep to encode)
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


@functools.cache
def _spec_schema() -> dict[str, Any]:
    return crd.spec_schema()


def _known_fields(loc: Sequence[int | str]) -> list[str]:
    """Wire names allowed in the object at ``loc`` (relative to spec), from the CRD schema."""
    node: dict[str, Any] = _spec_schema()
    for part in loc:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return list(node.get("properties", {}))


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        # Snake case where camelCase is expected is the most common slip.
        camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(name.split("_")))
        close = [camel] if camel in candidates else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(error: ErrorDetails) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error["input"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        loc = error["loc"]
        known = _known_fields(loc[:-1])
        return "unknown field" + _did_you_mean(str(loc[-1]), known)
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        op, bound = {
            "less_than_equal": ("<=", "le"),
            "greater_than_equal": (">=", "ge"),
            "less_than": ("<", "lt"),
            "greater_than": (">", "gt"),
        }[kind]
        return f"must be {op} {ctx[bound]} (got {_show(value)})"
    if kind == "string_too_short":
        if ctx["min_length"] == 1:
            return "must not be empty"
        return f"must be at least {ctx['min_length']} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters long (got {len(value)})"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s) (got {ctx['actual_length']})"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items (got {ctx['actual_length']})"
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx["pattern"], f"must match {ctx['pattern']}")
        return f"{hint} (got {_show(value)})"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx['expected']} (got {_show(value)})"
    if kind in _TYPE_NAMES:
        message = f"must be {_TYPE_NAMES[kind]} (got {_show(value)}, {_kind_of(value)})"
        if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            message += "; quote it in YAML"
        return message
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def problems_from_pydantic(exc: ValidationError, prefix: str = "spec") -> list[Problem]:
    """Turn a pydantic ValidationError into problems at wire paths under ``prefix``."""
    return [Problem(_format_path(prefix, e["loc"]), _describe(e)) for e in exc.errors()]


def format_errors(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """:func:`problems_from_pydantic` as messages (``spec.stages[1].weight: must be <= 100``)."""
    return [str(p) for p in problems_from_pydantic(exc, prefix)]


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and lists more than ``limit`` levels (a scalar is 0).
    Iterative: a value too deep for the interpreter's stack is measured like any other."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def parse_spec(spec: Mapping[str, Any]) -> ModelRolloutSpec:
    """Parse a spec as the apiserver would: strict JSON types, camelCase names only.

    Raises :class:`InvalidModelRollout` with one problem per bad field.
    """
    deep = [key for key, value in spec.items() if deeper_than(value, MAX_SPEC_DEPTH - 1)]
    if deep:
        raise InvalidModelRollout(
            [
                Problem(
                    f"spec.{str(key)[:60]}",
                    f"nests objects and lists more than {MAX_SPEC_DEPTH} levels deep",
                )
                for key in deep
            ]
        )
    size = len(json.dumps(spec, default=str, separators=(",", ":")))
    if size > MAX_SPEC_BYTES:
        raise InvalidModelRollout(
            [
                Problem(
                    "spec",
                    f"is {size} bytes as JSON, more than the {MAX_SPEC_BYTES} allowed; the "
                    "object, its status and audit history must fit in etcd",
                )
            ]
        )
    text = json.dumps(spec, default=str)
    try:
        return ModelRolloutSpec.model_validate_json(text, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise InvalidModelRollout(problems_from_pydantic(exc)) from exc


# ---------------------------------------------------------------- cross-field rules


def _check_metadata(metadata: Any) -> Iterator[Problem]:
    if not isinstance(metadata, Mapping):
        yield Problem("metadata", f"must be an object (got {_kind_of(metadata)})")
        return
    name = metadata.get("name")
    if name is None:
        return  # generateName, or a manifest about to be named by kubectl
    if not isinstance(name, str):
        yield Problem("metadata.name", f"must be a string (got {_show(name)})")
    elif len(name) > crd.MAX_NAME_LENGTH:
        yield Problem(
            "metadata.name",
            f"must be at most {crd.MAX_NAME_LENGTH} characters long (got {len(name)}): the "
            "Deployments and Services named after it must stay valid DNS labels",
        )
    elif not re.fullmatch(crd.NAME_PATTERN, name):
        yield Problem("metadata.name", f"{_PATTERN_HINTS[crd.NAME_PATTERN]} (got {_show(name)})")


def _check_routing(spec: ModelRolloutSpec) -> Iterator[Problem]:
    routing = spec.traffic_routing
    chosen = [
        alias
        for alias, value in zip(
            ROUTERS, (routing.gateway_api, routing.istio, routing.replicas), strict=True
        )
        if value is not None
    ]
    if len(chosen) != 1:
        got = "none is set" if not chosen else "got " + " and ".join(chosen)
        yield Problem("spec.trafficRouting", f"set exactly one of {', '.join(ROUTERS)} ({got})")


def _check_stages(spec: ModelRolloutSpec) -> Iterator[Problem]:
    stages = spec.stages
    defaulted = "stages" not in spec.model_fields_set
    yield from _duplicates("spec.stages", [s.name for s in stages], "stage")
    for i, stage in enumerate(stages):
        path = f"spec.stages[{i}]"
        if stage.weight == 0 and stage.mirror == 0:
            yield Problem(path, "gives the candidate no traffic; set weight > 0 or mirror > 0")
        previous = stages[i - 1] if i > 0 else None
        if previous is not None and stage.weight < previous.weight:
            yield Problem(
                f"{path}.weight",
                f"must not be below the previous stage's weight {previous.weight} "
                f"(got {stage.weight}); weights never decrease",
            )
        elif (
            previous is not None
            and stage.weight == previous.weight
            and stage.mirror <= previous.mirror
        ):
            yield Problem(
                f"{path}.weight",
                f"repeats the previous stage's weight {stage.weight} without a higher mirror "
                f"({stage.mirror}, previous {previous.mirror}); every stage must give the "
                "candidate more: a higher weight, or the same weight and a higher mirror",
            )
        if stage.mirror > 0 and spec.traffic_routing.replicas is not None:
            hint = (
                " (spec.stages is omitted and the default stages start with a shadow stage: "
                "list your own stages)"
                if defaulted
                else ""
            )
            yield Problem(f"{path}.mirror", REPLICA_MIRROR_MESSAGE + hint)
    last = len(stages) - 1
    if stages[last].weight != 100:
        yield Problem(
            f"spec.stages[{last}].weight",
            f"the last stage must have weight 100 (got {stages[last].weight})",
        )
    if stages[last].mirror != 0:
        yield Problem(
            f"spec.stages[{last}].mirror",
            f"the last stage serves all traffic and must not mirror (got {stages[last].mirror})",
        )


def _check_min_duration(path: str, value: str, minimum: timedelta, what: str) -> Iterator[Problem]:
    if parse_duration(value) < minimum:
        yield Problem(path, f"must be {what} (got {value})")


def _check_prometheus(prom: PrometheusSpec, interval: str) -> Iterator[Problem]:
    path = "spec.analysis.prometheus"
    if prom.timeout is None:
        pass  # the default adapts to the interval (PrometheusSpec.effective_timeout)
    elif parse_duration(prom.timeout) <= timedelta(0):
        yield Problem(f"{path}.timeout", f"must be > 0 (got {prom.timeout})")
    elif parse_duration(prom.timeout) > parse_duration(MAX_OUTBOUND_TIMEOUT):
        yield Problem(f"{path}.timeout", f"{OUTBOUND_TIMEOUT_HINT} (got {prom.timeout})")
    elif parse_duration(prom.timeout) >= parse_duration(interval):
        yield Problem(
            f"{path}.timeout",
            f"must be shorter than spec.analysis.interval ({interval}; got {prom.timeout})",
        )
    auth = prom.auth
    if auth is not None:
        if auth.bearer_token is not None and (auth.username or auth.password):
            yield Problem(f"{path}.auth", "set bearerToken or username and password, not both")
        if (auth.username is None) != (auth.password is None):
            missing = "password" if auth.password is None else "username"
            yield Problem(
                f"{path}.auth", f"username and password go together ({missing} is missing)"
            )
    if prom.tls is not None and prom.tls.ca is not None and prom.tls.insecure_skip_verify:
        yield Problem(f"{path}.tls", "set ca or insecureSkipVerify, not both")


def _check_metric(metric: MetricCheck, path: str, stage_names: Sequence[str]) -> Iterator[Problem]:
    if (metric.template is None) == (metric.query is None):
        got = "neither is set" if metric.template is None else "both are set"
        yield Problem(path, f"set exactly one of template and query ({got})")
    has_bound = metric.min is not None or metric.max is not None
    psi = metric.template == MetricTemplate.PREDICTION_PSI
    if metric.compare is not None and psi:
        yield Problem(
            f"{path}.compare",
            "prediction-psi already compares candidate with stable; use max (e.g. 0.2) instead",
        )
    elif metric.compare is not None and has_bound:
        yield Problem(
            path,
            "a comparison check (compare) takes no min or max; remove min and max for a "
            "comparison against the stable, or compare for a fixed bound",
        )
    elif psi and metric.max is None:
        yield Problem(
            f"{path}.max",
            "required with the prediction-psi template (e.g. 0.2): it measures drift, "
            "bigger is worse",
        )
    elif metric.compare is None and not has_bound:
        yield Problem(
            path,
            "a threshold check needs min, max or both (or compare for a comparison against "
            "the stable)",
        )
    if metric.min is not None and metric.max is not None and metric.min >= metric.max:
        yield Problem(
            f"{path}.min", f"must be below max (got min {metric.min:g}, max {metric.max:g})"
        )
    if metric.query is not None:
        try:
            validate_query(metric.query)
        except TemplateError as exc:
            yield Problem(f"{path}.query", str(exc))
    if metric.template == MetricTemplate.ERROR_RATE:
        for name, bound in (("min", metric.min), ("max", metric.max)):
            if bound is not None and not 0 <= bound <= 1:
                hint = f"; for {bound:g}% write {bound / 100:g}" if 1 < bound <= 100 else ""
                yield Problem(
                    f"{path}.{name}",
                    f"error-rate is a ratio between 0 and 1 (got {bound:g}){hint}",
                )
    if metric.compare is not None:
        compare, cpath = metric.compare, f"{path}.compare"
        yield from _check_min_duration(f"{cpath}.step", compare.step, MIN_INTERVAL, ">= 1s")
        step = parse_duration(compare.step)
        if compare.window is not None and step >= MIN_INTERVAL:
            samples = int(parse_duration(compare.window) / step)
            if samples < compare.min_samples:
                yield Problem(
                    f"{cpath}.window",
                    f"{compare.window} at step {compare.step} gives at most {samples} samples, "
                    f"fewer than minSamples {compare.min_samples}; the check could never pass",
                )
    for j, name in enumerate(metric.stages or []):
        if name not in stage_names:
            yield Problem(
                f"{path}.stages[{j}]",
                f"no stage named {name!r}; the stages are {', '.join(stage_names)}"
                + _did_you_mean(name, stage_names),
            )
        elif (metric.stages or []).index(name) != j:
            yield Problem(f"{path}.stages[{j}]", f"{name!r} is listed twice")


def _check_analysis(analysis: AnalysisSpec, stage_names: Sequence[str]) -> Iterator[Problem]:
    yield from _check_min_duration(
        "spec.analysis.interval", analysis.interval, MIN_INTERVAL, "at least 1s"
    )
    yield from _check_prometheus(analysis.prometheus, analysis.interval)
    yield from _duplicates("spec.analysis.metrics", [m.name for m in analysis.metrics], "check")
    for i, metric in enumerate(analysis.metrics):
        yield from _check_metric(metric, f"spec.analysis.metrics[{i}]", stage_names)


def _check_webhooks(webhooks: Sequence[WebhookSpec]) -> Iterator[Problem]:
    yield from _duplicates("spec.webhooks", [w.name for w in webhooks], "webhook")
    for i, hook in enumerate(webhooks):
        path = f"spec.webhooks[{i}]"
        if (hook.url is None) == (hook.url_from is None):
            got = "neither is set" if hook.url is None else "both are set"
            yield Problem(path, f"set exactly one of url and urlFrom ({got})")
        yield from _check_min_duration(f"{path}.timeout", hook.timeout, timedelta.resolution, "> 0")
        if parse_duration(hook.timeout) > parse_duration(MAX_OUTBOUND_TIMEOUT):
            yield Problem(f"{path}.timeout", f"{OUTBOUND_TIMEOUT_HINT} (got {hook.timeout})")


def _duplicates(path: str, names: Sequence[str], what: str) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            yield Problem(
                f"{path}[{i}].name", f"duplicate {what} name {name!r} (also {path}[{first[name]}])"
            )
        else:
            first[name] = i


def _check_template(template: Mapping[str, Any]) -> Iterator[Problem]:
    path = "spec.template.spec"
    pod = template.get("spec")
    if not isinstance(pod, Mapping):
        yield Problem(path, "required: the model server's PodTemplateSpec needs a pod spec")
        return
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        yield Problem(f"{path}.containers", "the model server's pod needs at least one container")
        return
    for i, container in enumerate(containers):
        cpath = f"{path}.containers[{i}]"
        if not isinstance(container, Mapping):
            yield Problem(cpath, f"must be an object (got {_kind_of(container)})")
            continue
        for key in ("name", "image"):
            if not isinstance(container.get(key), str) or not container[key]:
                yield Problem(f"{cpath}.{key}", "required")


def cross_field_problems(spec: ModelRolloutSpec) -> list[Problem]:
    """The cross-field rules of a parsed spec (the CEL rules, and more)."""
    stage_names = [s.name for s in spec.stages]
    problems = [
        *_check_routing(spec),
        *_check_stages(spec),
        *_check_analysis(spec.analysis, stage_names),
        *_check_webhooks(spec.webhooks),
        *_check_min_duration(
            "spec.progressDeadline", spec.progress_deadline, MIN_INTERVAL, "at least 1s"
        ),
        *_check_template(spec.template),
    ]
    return problems


def _split(
    obj: ModelRollout | ModelRolloutSpec | Mapping[str, Any],
) -> tuple[list[Problem], ModelRolloutSpec | None]:
    """Problems found on the way to a parsed spec, and the spec if it parsed."""
    if isinstance(obj, ModelRolloutSpec):
        return [], obj
    if isinstance(obj, ModelRollout):
        return list(_check_metadata(obj.metadata)), obj.spec
    if not isinstance(obj, Mapping):
        return [Problem("", f"expected a ModelRollout object (got {_kind_of(obj)})")], None
    if not any(key in obj for key in ("spec", "kind", "apiVersion", "metadata")):
        obj = {"spec": obj}  # a bare spec
    problems: list[Problem] = []
    for key in obj:
        if key not in TOP_LEVEL_FIELDS:
            problems.append(
                Problem(str(key), "unknown field" + _did_you_mean(str(key), TOP_LEVEL_FIELDS))
            )
    if "apiVersion" in obj and obj["apiVersion"] != API_VERSION:
        problems.append(
            Problem("apiVersion", f"must be {API_VERSION} (got {_show(obj['apiVersion'])})")
        )
    if "kind" in obj and obj["kind"] != KIND:
        problems.append(Problem("kind", f"must be {KIND} (got {_show(obj['kind'])})"))
    if "metadata" in obj:
        problems.extend(_check_metadata(obj["metadata"]))
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        got = "missing" if spec is None else f"got {_kind_of(spec)}"
        problems.append(Problem("spec", f"required: an object ({got})"))
        return problems, None
    try:
        return problems, parse_spec(spec)
    except InvalidModelRollout as exc:
        return problems + list(exc.problems), None


def find_problems(obj: ModelRollout | ModelRolloutSpec | Mapping[str, Any]) -> list[Problem]:
    """Every problem with a ModelRollout: a whole object (model or manifest) or a spec.

    A manifest that does not parse gets its field problems only: the cross-field rules need
    a parsed spec.
    """
    problems, spec = _split(obj)
    if spec is not None:
        problems.extend(cross_field_problems(spec))
    return problems


def validate(obj: ModelRollout | ModelRolloutSpec | Mapping[str, Any]) -> list[str]:
    """:func:`find_problems` as messages, e.g. ``spec.stages[1].weight: must be <= 100 (got
    150)``; empty when the ModelRollout is valid."""
    return [str(p) for p in find_problems(obj)]


def check(obj: ModelRollout | ModelRolloutSpec | Mapping[str, Any]) -> ModelRolloutSpec:
    """The parsed spec of a valid ModelRollout; raises :class:`InvalidModelRollout` otherwise."""
    problems, spec = _split(obj)
    if spec is not None:
        problems.extend(cross_field_problems(spec))
    if problems or spec is None:
        raise InvalidModelRollout(problems)
    return spec
