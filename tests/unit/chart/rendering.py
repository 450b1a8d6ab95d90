"""Shared helpers of the chart tests: where the chart is, value merging, object lookup."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from typing import Any

import yaml

from tests.unit.chart.helm import REPO

CHART = REPO / "charts" / "modelrollout-operator"
RELEASE = "rel"
RELEASE_NAMESPACE = "mr-system"
FULLNAME = f"{RELEASE}-modelrollout-operator"

Manifest = dict[str, Any]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[[dict[str, Any]], list[Manifest]]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's value coalescing for plain maps: override wins, maps merge, lists replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def effective_values(override: dict[str, Any]) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return deep_merge(defaults, override)


def only(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]
