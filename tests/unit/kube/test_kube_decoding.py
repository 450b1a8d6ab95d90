"""An object nobody can decode is left out of a watch or a list, reported with its identity, and
everything else decodes exactly as orjson (the same as the json module) would."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrollout.api.validation import MAX_SPEC_DEPTH
from modelrollout.kube.decoding import Undecodable, decode_document, decode_event
from tests.bad_input.deep import API, event, nested, rollout

MARK = "@@managed-fields-here@@"  # longer than any generated key or string


class Reports(list[Undecodable]):
    def __call__(self, lost: Undecodable) -> None:
        self.append(lost)


def test_an_ordinary_event_decodes_as_the_json_module_does_less_managed_fields() -> None:
    line = event("MODIFIED", rollout("r", "12", managed='[{"manager":"kubectl"}]'))
    reports = Reports()
    decoded = decode_event(line, reports)
    expected = json.loads(line)
    del expected["object"]["metadata"]["managedFields"]
    assert decoded == expected and reports == []


def test_a_too_deep_managed_fields_is_dropped_and_the_object_kept() -> None:
    """The apiserver stores managedFields as sent: 1,100 levels of it are accepted (HTTP 201)."""
    line = event("ADDED", rollout("r", "7", managed=f'[{{"fieldsV1":{nested(1100)}}}]'))
    with pytest.raises(json.JSONDecodeError):
        orjson.loads(line)
    reports = Reports()
    decoded = decode_event(line, reports)
    assert decoded["type"] == "ADDED" and reports == []
    assert decoded["object"]["metadata"] == {
        "name": "r", "namespace": "ml", "uid": "uid-r", "resourceVersion": "7",
        "generation": 2, "labels": {"team": "a"},
    }  # fmt: skip
    assert decoded["object"]["spec"] == {"replicas": 1}


@pytest.mark.parametrize("levels", [1100, MAX_SPEC_DEPTH + 1])
def test_a_too_deep_spec_becomes_a_bookmark_and_a_report(levels: int) -> None:
    """Past orjson's limit, or past what validation (and kopf's deep copies) take."""
    spec = f'{{"template":{nested(levels - 2)}}}'
    reports = Reports()
    decoded = decode_event(event("MODIFIED", rollout("deep", "41", spec=spec)), reports)
    assert decoded == {
        "type": "BOOKMARK",
        "object": {
            "apiVersion": API,
            "kind": "ModelRollout",
            "metadata": {"resourceVersion": "41"},
        },
    }
    [lost] = reports
    assert (lost.namespace, lost.name, lost.uid, lost.resource_version) == (
        "ml", "deep", "uid-deep", "41",
    )  # fmt: skip
    assert "spec" in lost.reason


def test_the_deepest_spec_allowed_passes() -> None:
    spec = f'{{"template":{nested(MAX_SPEC_DEPTH - 2)}}}'
    reports = Reports()
    assert decode_event(event("ADDED", rollout("r", "3", spec=spec)), reports)["type"] == "ADDED"
    assert reports == []


def test_the_deletion_of_an_undecodable_object_is_passed_on_as_its_identity() -> None:
    spec = f'{{"template":{nested(1100)}}}'
    decoded = decode_event(event("DELETED", rollout("deep", "50", spec=spec)), Reports())
    assert decoded["type"] == "DELETED"
    assert decoded["object"]["metadata"] == {
        "name": "deep", "namespace": "ml", "uid": "uid-deep", "resourceVersion": "50",
    }  # fmt: skip


def test_a_torn_line_is_still_the_json_modules_error() -> None:
    line = event("MODIFIED", rollout("r", "12"))
    with pytest.raises(json.JSONDecodeError):
        decode_event(line[:-5], Reports())
    with pytest.raises(json.JSONDecodeError):
        decode_event(line[:-5] + nested(1100), Reports())


def test_a_list_loses_only_its_undecodable_items() -> None:
    items = [
        rollout("a", "1"),
        rollout("deep", "2", spec=f'{{"template":{nested(1100)}}}'),
        rollout("mf", "3", managed=f'[{{"fieldsV1":{nested(1100)}}}]'),
        rollout("b", "4"),
    ]
    text = f'{{"kind":"ModelRolloutList","apiVersion":"{API}","metadata":{{"resourceVersion":"9"}},'
    text += f'"items":[{",".join(items)}]}}'
    reports = Reports()
    doc = decode_document(text.encode(), reports)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["a", "mf", "b"]
    assert doc["metadata"] == {"resourceVersion": "9"}
    assert [(r.name, r.kind) for r in reports] == [("deep", "ModelRollout")]


def test_a_single_undecodable_object_answers_with_its_identity() -> None:
    reports = Reports()
    doc = decode_document(rollout("deep", "8", spec=f'{{"x":{nested(1100)}}}'), reports)
    assert doc["metadata"]["resourceVersion"] == "8" and "spec" not in doc
    assert [r.name for r in reports] == ["deep"]


# ------------------------------------------------------------------ generated documents

_KEYS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(spec=st.dictionaries(_KEYS, _JSON, max_size=5), labels=st.dictionaries(_KEYS, st.text()))
def test_whatever_surrounds_a_too_deep_part_is_decoded_intact(
    spec: dict[str, Any], labels: dict[str, str]
) -> None:
    """Keys and strings full of quotes, brackets and escapes around a 1,100-deep managedFields:
    the scanner finds the same parts orjson would."""
    meta = {"name": "r", "namespace": "ml", "resourceVersion": "5", "labels": labels}
    obj = {"apiVersion": API, "kind": "Other", "metadata": {**meta, "managedFields": MARK}}
    obj["spec"] = spec
    text = json.dumps({"type": "MODIFIED", "object": obj}, ensure_ascii=False)
    line = text.replace(f'"{MARK}"', f'[{{"fieldsV1":{nested(1100)}}}]')
    with pytest.raises(json.JSONDecodeError):
        orjson.loads(line)
    reports = Reports()
    decoded = decode_event(line, reports)
    del obj["metadata"]["managedFields"]
    assert decoded == {"type": "MODIFIED", "object": obj} and reports == []
