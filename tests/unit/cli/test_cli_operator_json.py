"""kopf decodes its watch streams with orjson: the same events, faster, or kopf's own."""

from __future__ import annotations

import importlib
import json
import sys
import types

import orjson
import pytest

from modelrollout.cli import operator

EVENT = {
    "type": "MODIFIED",
    "object": {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "r", "namespace": "ml", "resourceVersion": "12", "generation": 3},
        "spec": {"model": {"name": "m", "version": "2.0.0"}, "replicas": 2},
        "status": {
            "history": [{"event": "StageEntered", "value": 0.0012, "big": 2**62, "ok": True}] * 3,
            "message": "stage canary-10 \u2013 ends 12:00:00Z \u00e9",
            "weights": {"stable": 90, "candidate": 10, "actualCandidate": None},
        },
    },
}


def test_kopfs_watch_lines_decode_with_orjson_to_the_same_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = importlib.import_module(operator.KOPF_API_MODULE)
    monkeypatch.setattr(api, "json", json)  # restored after the test
    assert operator.decode_watch_events_with_orjson() is True
    assert api.json.loads is orjson.loads
    assert operator.decode_watch_events_with_orjson() is True  # twice is once
    line = json.dumps(EVENT, ensure_ascii=False).encode()
    # What kopf's stream() does with each line.
    assert api.json.loads(line.decode("utf-8")) == json.loads(line) == EVENT
    # A torn line is still the error kopf and aiohttp expect from the json module.
    with pytest.raises(json.JSONDecodeError):
        api.json.loads(line[:-5].decode("utf-8"))
    assert api.json.dumps is json.dumps  # everything else is the json module's


def test_a_kopf_that_decodes_elsewhere_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("kopf_without_json")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert operator.decode_watch_events_with_orjson(module.__name__) is False
    assert not hasattr(module, "json")
