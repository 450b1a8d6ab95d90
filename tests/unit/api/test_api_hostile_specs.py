"""Generated hostile input: thousands of specs and manifests (deep, huge, wrong types, unicode,
NaN, infinities, huge numbers, mutations of a valid rollout at every path) through the spec
parser, validation and the decode path. None raises anything but the specific validation error
(:class:`~modelrollout.api.validation.InvalidModelRollout`, or JSONDecodeError for text that is
not JSON); validation never raises at all.

The table of hand-picked cases is tests/bad_input/cases.py; this finds what nobody picked.
Example counts keep each test to a few seconds.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelrollout.api import validation
from modelrollout.api.models import ModelRolloutSpec
from modelrollout.api.validation import InvalidModelRollout, parse_spec
from modelrollout.kube.decoding import Undecodable, decode_document, decode_event
from modelrollout.reconciler import _parse_status
from tests.bad_input.cases import base

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(["", " ", "\u202e", "\x00", "💥" * 50, "10m", "-1s", "8785h", "a" * 5000])
_NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 101, 10**309, 2**63, math.nan, math.inf, -0.0, 1e-320])
)
_SCALARS = st.none() | st.booleans() | _NUMBERS | _TEXT
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_TEXT, inner, max_size=5),
    max_leaves=25,
)


def _nest(levels: int, leaf: Any) -> Any:
    """``leaf`` inside ``levels`` alternating objects and lists (built without recursion)."""
    value = leaf
    for i in range(levels):
        value = {"x": value} if i % 2 else [value]
    return value


_HOSTILE = _VALUES


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, sub in value.items():
            out += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out += _paths(sub, (*prefix, i))
    return out


BASE = base("hostile")
PATHS = [p for p in _paths(BASE) if p]
IN_SPEC = [p for p in PATHS if p[0] == "spec" and len(p) > 1]


def _replace(manifest: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(manifest)
    node: Any = edited
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return edited


def _parse_or_refuse(spec: Any) -> None:
    try:
        parsed = parse_spec(spec)
    except InvalidModelRollout as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
    else:
        assert isinstance(parsed, ModelRolloutSpec)


@SETTINGS
@given(
    path=st.sampled_from(PATHS), value=_HOSTILE, depth=st.sampled_from([0, 0, 0, 7, 40, 1100, 3000])
)
def test_any_field_of_a_valid_rollout_replaced_by_anything_is_parsed_or_refused(
    path: tuple[Any, ...], value: Any, depth: int
) -> None:
    """``depth`` wraps the value in that many levels (1,100: past orjson; 3,000: past the
    recursion limit, which hypothesis raises to about 2,000 while it runs)."""
    manifest = _replace(BASE, path, _nest(depth, value))
    problems = validation.validate(manifest)  # never raises
    assert all(isinstance(p, str) and p for p in problems)
    try:
        validation.check(manifest)
    except InvalidModelRollout as exc:
        assert exc.problems
    if path[0] == "spec" and isinstance(manifest["spec"], dict):
        _parse_or_refuse(manifest["spec"])


@settings(max_examples=400, deadline=None)
@given(spec=st.dictionaries(_TEXT | st.sampled_from(list(BASE["spec"])), _HOSTILE, max_size=8))
def test_a_spec_made_of_anything_is_parsed_or_refused(spec: dict[str, Any]) -> None:
    _parse_or_refuse(spec)
    assert isinstance(validation.validate({"spec": spec}), list)


@SETTINGS
@given(manifest=_HOSTILE)
def test_a_manifest_that_is_anything_at_all_gets_problems_not_an_exception(manifest: Any) -> None:
    problems = validation.validate(manifest)
    if not isinstance(manifest, dict):
        assert problems


@settings(max_examples=300, deadline=None)
@given(levels=st.integers(validation.MAX_SPEC_DEPTH, 3000), where=st.sampled_from(IN_SPEC))
def test_a_spec_deeper_than_allowed_is_refused_with_the_depth_problem(
    levels: int, where: tuple[Any, ...]
) -> None:
    manifest = _replace(BASE, where, _nest(levels, 1))
    with pytest.raises(InvalidModelRollout) as refused:
        parse_spec(manifest["spec"])
    assert f"more than {validation.MAX_SPEC_DEPTH} levels deep" in str(refused.value)


def _iterative_dumps(value: Any) -> str:
    """JSON text of ``value``, also past the depth json.dumps can write."""
    prefix, suffix = [], []
    while True:
        if isinstance(value, dict) and list(value) == ["x"]:
            prefix.append('{"x":')
            suffix.append("}")
            value = value["x"]
        elif isinstance(value, list) and len(value) == 1:
            prefix.append("[")
            suffix.append("]")
            value = value[0]
        else:
            break
    return "".join(prefix) + json.dumps(value, allow_nan=False) + "".join(reversed(suffix))


_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | _TEXT


@SETTINGS
@given(
    levels=st.lists(st.integers(0, 1500), min_size=1, max_size=3),
    leaf=_JSON_SCALARS,
    kind=st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
)
def test_a_watch_event_of_anything_decodes_or_is_left_out_with_a_report(
    levels: list[int], leaf: Any, kind: str
) -> None:
    """Specs of up to three members nested up to 1,500 levels (orjson stops at 1,024)."""
    members = ",".join(f'"m{i}":{_iterative_dumps(_nest(n, leaf))}' for i, n in enumerate(levels))
    spec = "{" + members + "}"
    meta = '{"name":"h","namespace":"ns","uid":"u","resourceVersion":"3"}'
    obj = f'{{"apiVersion":"modelrollout.dev/v1alpha1","kind":"ModelRollout","metadata":{meta},'
    line = f'{{"type":"{kind}","object":{obj}"spec":{spec}}}}}'
    reports: list[Undecodable] = []
    event = decode_event(line, reports.append)
    too_deep = max(levels) + 1 > validation.MAX_SPEC_DEPTH
    assert bool(reports) == too_deep
    if too_deep:
        assert event["type"] in ("BOOKMARK", "DELETED") and reports[0].name == "h"
    else:
        assert event["type"] == kind
        assert event["object"]["spec"] == orjson.loads(line)["object"]["spec"]
    listing = f'{{"kind":"ModelRolloutList","items":[{obj}"spec":{spec}}}]}}'
    doc = decode_document(listing, reports.append)
    assert len(doc["items"]) == (0 if too_deep else 1)


@SETTINGS
@given(status=_HOSTILE)
def test_a_status_of_anything_is_read_or_read_as_empty(status: Any) -> None:
    _parse_status(status if isinstance(status, dict) else {"phase": status})
