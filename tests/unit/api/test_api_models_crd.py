"""The pydantic models and the CRD schema agree field by field, and what the operator writes to
status (and what users write to spec) is accepted by the schema without anything pruned."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import annotated_types
import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from modelrollout.api import crd, podtemplate
from modelrollout.api.models import (
    Condition,
    MetricResult,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Verdict,
    status_to_wire,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))

_SCALARS: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    datetime: {"type": "string", "format": "date-time"},
}


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the plain type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            assert len(args) == 1, f"unexpected union {annotation}"
            annotation = args[0]
        else:
            return annotation


def _wire_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _constraints(field: Any) -> dict[str, Any]:
    """The field's bounds in CRD (OpenAPI v3.0) terms."""
    out: dict[str, Any] = {}
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            out["minimum"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            out.update(minimum=item.gt, exclusiveMinimum=True)
        elif isinstance(item, annotated_types.Le):
            out["maximum"] = item.le
        elif isinstance(item, annotated_types.Lt):
            out.update(maximum=item.lt, exclusiveMaximum=True)
        elif isinstance(item, annotated_types.MinLen):
            out["minItems" if _is_list(field) else "minLength"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            out["maxItems" if _is_list(field) else "maxLength"] = item.max_length
        elif getattr(item, "pattern", None) is not None:
            out["pattern"] = item.pattern
    return out


def _is_list(field: Any) -> bool:
    return typing.get_origin(_unwrap(field.annotation)) is list


def _agree(annotation: Any, node: dict[str, Any], path: str) -> None:
    """Assert the schema node describes ``annotation``, recursing into models and lists."""
    plain = _unwrap(annotation)
    origin = typing.get_origin(plain)
    if isinstance(plain, type) and issubclass(plain, BaseModel):
        assert node["type"] == "object", path
        fields = _wire_fields(plain)
        properties = node.get("properties", {})
        assert set(fields) == set(properties), (
            f"{path}: models {set(fields)} vs CRD {set(properties)}"
        )
        required = {name for name, f in fields.items() if f.is_required()}
        assert set(node.get("required", [])) == required, path
        for name, field in fields.items():
            sub = properties[name]
            for key, value in _constraints(field).items():
                assert sub.get(key) == value, f"{path}.{name}: {key} {sub.get(key)!r} != {value!r}"
            _agree(field.annotation, sub, f"{path}.{name}")
    elif origin is list:
        assert node["type"] == "array", path
        _agree(typing.get_args(plain)[0], node["items"], path + "[]")
    elif origin is dict:
        # The one dict of the spec, the pod template: Kubernetes' own schema, generated.
        assert path == "spec.template", path
        assert node == podtemplate.template_schema(), path
    elif origin is Literal:
        assert node["type"] == "string", path
        assert node["enum"] == list(typing.get_args(plain)), path
    elif isinstance(plain, type) and issubclass(plain, Enum):
        assert node["type"] == "string", path
        assert node["enum"] == [member.value for member in plain], path
    else:
        expected = _SCALARS[plain]
        assert {k: node.get(k) for k in expected} == expected, path


def test_spec_model_and_crd_agree_field_by_field() -> None:
    _agree(ModelRolloutSpec, crd.spec_schema(), "spec")


def test_status_model_and_crd_agree_field_by_field() -> None:
    _agree(ModelRolloutStatus, crd.status_schema(), "status")


# ----------------------------------------------------------- round trips through the schema


def _sample(annotation: Any) -> Any:
    """A value of ``annotation`` with every optional field set (so nothing is left untested)."""
    plain = _unwrap(annotation)
    origin = typing.get_origin(plain)
    if isinstance(plain, type) and issubclass(plain, BaseModel):
        return plain(**{name: _sample(f.annotation) for name, f in plain.model_fields.items()})
    if origin is list:
        return [_sample(typing.get_args(plain)[0])]
    if origin is dict:
        return {"free": "form"}
    if origin is Literal:
        return typing.get_args(plain)[-1]
    if isinstance(plain, type) and issubclass(plain, Enum):
        return list(plain)[-1]
    return {
        bool: True,
        int: 7,
        float: 0.25,
        str: "text",
        datetime: datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC),
    }[plain]


def _all_keys_present(value: Any, model: type[BaseModel], path: str) -> None:
    """The dump contains every field of every nested model (the sample is complete)."""
    fields = _wire_fields(model)
    assert set(value) == set(fields), path
    for name, field in fields.items():
        plain = _unwrap(field.annotation)
        if typing.get_origin(plain) is list:
            plain = _unwrap(typing.get_args(plain)[0])
            items = value[name]
        else:
            items = [value[name]]
        if isinstance(plain, type) and issubclass(plain, BaseModel):
            for item in items:
                _all_keys_present(item, plain, f"{path}.{name}")


def _as_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as draft-4 JSON Schema where pruning becomes an error: an object with
    declared properties refuses others (the apiserver would silently drop them)."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node:
        out["properties"] = {k: _as_jsonschema(v) for k, v in node["properties"].items()}
    if "additionalProperties" in node:
        out["additionalProperties"] = _as_jsonschema(node["additionalProperties"])
    elif node.get("type") == "object":
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = _as_jsonschema(node["items"])
    return out


def _validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _is_rfc3339(value: object) -> bool:
        return not isinstance(value, str) or (
            "T" in value and datetime.fromisoformat(value).tzinfo is not None
        )

    return jsonschema.Draft4Validator(_as_jsonschema(schema), format_checker=checker)


def _errors(validator: jsonschema.Draft4Validator, value: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)
    ]


def test_a_fully_populated_status_round_trips_through_the_schema() -> None:
    status = _sample(ModelRolloutStatus)
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    _all_keys_present(written, ModelRolloutStatus, "status")
    assert _errors(_validator(crd.status_schema()), written) == []
    assert ModelRolloutStatus.model_validate(written) == status


def test_a_default_status_round_trips_through_the_schema() -> None:
    written = ModelRolloutStatus().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert _errors(_validator(crd.status_schema()), written) == []


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_status_to_wire_leaves_out_empty_strings_without_losing_anything() -> None:
    status = _sample(ModelRolloutStatus)
    status.message = ""
    status.conditions[0].message = ""
    status.history[0].reason = ""
    wire = status_to_wire(status)
    assert "message" not in wire
    assert "message" not in wire["conditions"][0]
    assert "reason" not in wire["history"][0]
    assert "" not in _strings(wire)
    assert _errors(_validator(crd.status_schema()), wire) == []
    assert ModelRolloutStatus.model_validate(wire) == status


def test_the_status_schema_refuses_what_the_apiserver_would_prune_or_reject() -> None:
    validator = _validator(crd.status_schema())
    assert _errors(validator, {"phase": "Exploded"})
    assert _errors(validator, {"weights": {"candidate": "five"}})
    assert _errors(validator, {"analysis": {"unknownCounter": 1}})
    assert _errors(
        validator, {"stage": {"index": 0, "name": "x", "weight": 0, "startedAt": "yesterday"}}
    )


def test_non_finite_measurements_never_reach_the_status() -> None:
    """JSON has no NaN: a NaN in a status patch would be refused, so it is recorded as absent."""
    result = MetricResult(name="error-rate", verdict=Verdict.INCONCLUSIVE, value=float("nan"),
                          stable_value=float("inf"), p_value=0.5)  # fmt: skip
    written = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert written == {"name": "error-rate", "verdict": "Inconclusive", "pValue": 0.5}


def test_timestamps_are_written_in_utc_with_a_z() -> None:
    local = datetime.fromisoformat("2026-03-04T07:06:07.5+02:00")
    condition = Condition(
        type="Ready", status="True", reason="Promoted", last_transition_time=local
    )
    written = condition.model_dump(mode="json", by_alias=True)
    assert written["lastTransitionTime"] == "2026-03-04T05:06:07.500000Z"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_and_their_model_dumps_fit_the_spec_schema(example: Path) -> None:
    validator = _validator(crd.spec_schema())
    for doc in yaml.safe_load_all(example.read_text()):
        if doc["kind"] != "ModelRollout":
            continue
        assert _errors(validator, doc["spec"]) == []
        dumped = ModelRolloutSpec.model_validate(doc["spec"]).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        assert _errors(validator, dumped) == []
