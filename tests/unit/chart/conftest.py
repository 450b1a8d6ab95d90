"""Fixtures for the chart tests: a helm binary and a renderer."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.helm import ensure_helm
from tests.unit.chart.rendering import (
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    HelmRun,
    Manifest,
    Render,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture
def run_helm(helm: Path, tmp_path: Path) -> HelmRun:
    """Run ``helm <verb> ... -f <values>``; returns the completed process (not checked)."""

    def run(verb: str, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        argv = [str(helm), verb, *extra, "-f", str(values_file)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    return run


@pytest.fixture
def render(run_helm: HelmRun) -> Render:
    """``helm template`` with these values; the rendered objects (fails the test on error)."""

    def do(values: dict[str, Any]) -> list[Manifest]:
        proc = run_helm("template", values, RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return do
