"""The shared write machinery: the guarded JSON patch and what counts as a conflict."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
from kubernetes.client.exceptions import ApiException

from modelrollout.routing import _common
from modelrollout.routing._common import is_conflict, json_patch
from tests.unit.routing.routing_fakes import PATCH_FAILED, SCHEMA_INVALID

CURRENT = {"metadata": {"name": "r", "resourceVersion": "7"}, "spec": {"a": [1, 2], "b": "x"}}


def test_patch_is_guarded_by_the_resource_version_and_minimal() -> None:
    new = {"metadata": CURRENT["metadata"], "spec": {"a": [1, 3], "b": "x"}}
    patch = json_patch(CURRENT, new)
    assert patch == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "replace", "path": "/spec/a/1", "value": 3},
    ]
    assert json_patch(CURRENT, CURRENT) is None


def test_a_diff_that_does_not_reproduce_the_target_falls_back_to_replacing_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = jsonpatch.JsonPatch([{"op": "replace", "path": "/spec/b", "value": "y"}])
    monkeypatch.setattr(_common.jsonpatch, "make_patch", lambda *_: wrong)
    new: dict[str, Any] = {"metadata": CURRENT["metadata"], "spec": {"a": [1, 3], "b": "x"}}
    patch = json_patch(CURRENT, new)
    assert patch is not None
    assert patch[1:] == [{"op": "replace", "path": "/spec", "value": new["spec"]}]
    assert jsonpatch.apply_patch(CURRENT, patch) == new


def test_body_without_resource_version_is_refused() -> None:
    with pytest.raises(ValueError, match="resourceVersion"):
        json_patch({"metadata": {}, "spec": {"a": 1}}, {"metadata": {}, "spec": {"a": 2}})


@pytest.mark.parametrize(
    ("error", "conflict"),
    [
        (ApiException(status=409, reason="Conflict"), True),
        (ApiException(status=422, reason="Unprocessable Entity", body=PATCH_FAILED), True),
        (ApiException(status=422, reason="Unprocessable Entity", body=SCHEMA_INVALID), False),
        (ApiException(status=422, reason="Unprocessable Entity", body=None), False),
        (ApiException(status=500, reason="Internal Server Error"), False),
        (ValueError("409"), False),
    ],
)
def test_is_conflict(error: BaseException, conflict: bool) -> None:
    assert is_conflict(error) is conflict
