"""Hand-written ModelRollout objects as the apiserver returns them (dicts), for the plugin tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ago(**delta: float) -> str:
    return stamp(NOW - timedelta(**delta))


STABLE = {"name": "fraud", "version": "2.3.1", "uri": "s3://models/fraud/2.3.1"}
CANDIDATE = {
    "name": "fraud",
    "version": "2.4.0",
    "uri": "s3://models/fraud/2.4.0",
    "digest": "sha256:" + "4f1c" * 16,
}


def base_rollout() -> dict[str, Any]:
    """In canary-5 (index 1 of 4), candidate ready 4 minutes ago, 10-minute stage."""
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {
            "name": "fraud",
            "namespace": "ml",
            "generation": 3,
            "resourceVersion": "100",
            "creationTimestamp": "2024-05-01T11:55:00Z",
        },
        "spec": {
            "model": {"name": "fraud", "version": "2.4.0", "uri": CANDIDATE["uri"]},
            "template": {"spec": {"containers": [{"name": "server", "image": "srv"}]}},
            "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
            "stages": [
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "canary-5", "weight": 5, "duration": "10m"},
                {"name": "canary-25", "weight": 25, "duration": "20m"},
                {"name": "full", "weight": 100},
            ],
        },
        "status": {
            "phase": "Progressing",
            "observedGeneration": 3,
            "stage": {
                "index": 1,
                "name": "canary-5",
                "weight": 5,
                "mirror": 0,
                "startedAt": ago(minutes=5),
                "readyAt": ago(minutes=4),
            },
            "weights": {"stable": 95, "candidate": 5, "mirror": 0},
            "stable": STABLE,
            "candidate": CANDIDATE,
            "stableVersion": "2.3.1",
            "candidateVersion": "2.4.0",
            "analysis": {
                "lastRunAt": ago(seconds=30),
                "runs": 4,
                "lastVerdict": "Successful",
                "results": [
                    {
                        "name": "error-rate",
                        "verdict": "Successful",
                        "value": 0.0042,
                        "bound": "<= 0.01",
                        "measuredAt": ago(seconds=30),
                    },
                    {
                        "name": "latency-vs-stable",
                        "verdict": "Inconclusive",
                        "value": 0.21,
                        "stableValue": 0.2,
                        "pValue": 0.31,
                        "bound": "mann-whitney increase, confidence 0.98",
                        "message": "too few samples",
                        "measuredAt": ago(seconds=30),
                    },
                ],
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Progressing",
                    "message": "stage canary-5",
                    "lastTransitionTime": ago(minutes=5),
                }
            ],
            "history": [],
        },
    }


def make_rollout(**status: Any) -> dict[str, Any]:
    """A fresh copy of the base rollout with ``status`` fields overridden."""
    obj = copy.deepcopy(base_rollout())
    obj["status"].update(status)
    return obj
