"""The operator's kopf diff base: the same essence as kopf's default, the status never copied."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from modelrollout.cli.operator import EssenceWithoutStatus


def rollout(history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "7",
            "managedFields": [{"manager": "modelrollout", "fieldsV1": {"f:status": {}}}],
            "ownerReferences": [{"kind": "Application", "name": "ml", "uid": "u0"}],
            "labels": {"team": "fraud"},
            "annotations": {
                "modelrollout.dev/command": "pause:1",
                "kopf.zalando.org/last-handled-configuration": '{"spec": {}}',
            },
        },
        "spec": {"model": {"name": "m", "version": "2", "uri": "s3://m/2"}, "replicas": 2},
        "status": {"phase": "Progressing", "history": history},
    }


def test_the_essence_is_kopfs_own_without_the_status() -> None:
    raw = rollout([{"seq": i, "event": "AnalysisRun"} for i in range(50)])
    ours = EssenceWithoutStatus().build(body=kopf.Body(copy.deepcopy(raw)))
    kopfs = kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(copy.deepcopy(raw)))
    assert ours == kopfs
    assert "status" not in ours and ours["spec"]["replicas"] == 2
    assert ours["metadata"] == {
        "labels": {"team": "fraud"},
        "annotations": {"modelrollout.dev/command": "pause:1"},
    }


def test_a_status_change_is_no_spec_change_and_a_spec_change_is() -> None:
    storage = EssenceWithoutStatus()
    before = storage.build(body=kopf.Body(rollout([])))
    more_history = storage.build(body=kopf.Body(rollout([{"seq": 1}])))
    edited_raw = rollout([])
    edited_raw["spec"]["replicas"] = 3
    edited = storage.build(body=kopf.Body(edited_raw))
    assert before == more_history
    assert before != edited


def test_the_essence_shares_nothing_with_the_body() -> None:
    """Later edits of the body (kopf patches it in place) must not change a stored essence."""
    raw = rollout([])
    essence = EssenceWithoutStatus().build(body=kopf.Body(raw))
    raw["spec"]["model"]["version"] = "3"
    raw["metadata"]["labels"]["team"] = "other"
    assert essence["spec"]["model"]["version"] == "2"
    assert essence["metadata"]["labels"]["team"] == "fraud"


def test_extra_status_fields_are_kept_when_a_handler_asks_for_them() -> None:
    raw = rollout([])
    essence = EssenceWithoutStatus().build(body=kopf.Body(raw), extra_fields=["status.phase"])
    assert essence["status"] == {"phase": "Progressing"}
