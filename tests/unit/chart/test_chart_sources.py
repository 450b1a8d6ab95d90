"""The chart's derived files agree with their single sources of truth (see charts/sync.py)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import modelrollout
from tests.unit.chart.helm import REPO
from tests.unit.chart.rendering import CHART

SYNC_SCRIPT = REPO / "charts" / "sync.py"
ARGOCD_DOC = REPO / "docs" / "gitops" / "argocd.md"
LUA_DIR = CHART / "files" / "argocd"
GROUP_KIND = "modelrollout.dev_ModelRollout"


def _load_sync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_sync", SYNC_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/annotations resolve through sys.modules
    spec.loader.exec_module(module)
    return module


sync = _load_sync()


def test_chart_version_and_app_version_are_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == modelrollout.__version__
    assert chart["appVersion"] == modelrollout.__version__
    assert isinstance(chart["appVersion"], str)


def test_chart_crd_is_a_byte_copy_of_the_generated_crd() -> None:
    source = REPO / "crds" / "modelrollout.yaml"
    copy = CHART / "crds" / "modelrollout.yaml"
    assert source.is_file(), "crds/modelrollout.yaml is missing (python -m modelrollout.api.crd)"
    assert copy.is_file(), "run `python charts/sync.py` to copy the CRD into the chart"
    assert copy.read_bytes() == source.read_bytes(), "run `python charts/sync.py`"


def _doc_configmap() -> dict[str, object]:
    text = ARGOCD_DOC.read_text()
    m = re.search(
        r"<!-- BEGIN GENERATED: argocd-cm[^>]*-->\n```yaml\n(.*?)```\n"
        r"<!-- END GENERATED: argocd-cm -->",
        text,
        re.S,
    )
    assert m, "generated argocd-cm block not found in docs/gitops/argocd.md"
    configmap = yaml.safe_load(m[1])
    assert isinstance(configmap, dict)
    return configmap


def test_argocd_doc_embeds_the_exact_lua() -> None:
    """Parse the doc's ConfigMap the way Argo CD does and compare with the Lua files."""
    configmap = _doc_configmap()
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "argocd-cm"  # type: ignore[index]
    data = configmap["data"]
    assert isinstance(data, dict)
    health = data[f"resource.customizations.health.{GROUP_KIND}"]
    assert health == (LUA_DIR / "health.lua").read_text()

    actions = yaml.safe_load(data[f"resource.customizations.actions.{GROUP_KIND}"])
    assert actions["discovery.lua"] == (LUA_DIR / "actions" / "discovery.lua").read_text()
    definitions = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    lua_actions = {p.stem for p in (LUA_DIR / "actions").glob("*.lua")} - {"discovery"}
    assert set(definitions) == lua_actions == set(sync.ACTIONS)
    for verb, lua in definitions.items():
        assert lua == (LUA_DIR / "actions" / f"{verb}.lua").read_text(), verb


def test_sync_check_reports_nothing_stale() -> None:
    proc = subprocess.run(
        [sys.executable, str(SYNC_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A minimal copy of the repository with what sync.py reads and writes."""
    for rel in [
        "operator/modelrollout/__init__.py",
        "charts/modelrollout-operator/Chart.yaml",
        "docs/gitops/argocd.md",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    shutil.copytree(LUA_DIR, tmp_path / "charts/modelrollout-operator/files/argocd")
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds/modelrollout.yaml").write_text("kind: CustomResourceDefinition\n")
    return tmp_path


def test_a_release_bump_updates_chart_version_and_app_version(fake_repo: Path) -> None:
    init = fake_repo / "operator/modelrollout/__init__.py"
    init.write_text(init.read_text().replace(f'"{modelrollout.__version__}"', '"7.3.0rc1"'))

    stale, errors = sync.sync(fake_repo, write=False)
    assert errors == []
    assert "charts/modelrollout-operator/Chart.yaml is stale" in stale

    sync.sync(fake_repo, write=True)
    chart_text = (fake_repo / "charts/modelrollout-operator/Chart.yaml").read_text()
    chart = yaml.safe_load(chart_text)
    assert (chart["version"], chart["appVersion"]) == ("7.3.0rc1", "7.3.0rc1")
    assert "# version and appVersion both follow" in chart_text  # comments survive
    assert sync.sync(fake_repo, write=False) == ([], [])


def test_sync_copies_the_crd_and_regenerates_the_doc(fake_repo: Path) -> None:
    lua = fake_repo / "charts/modelrollout-operator/files/argocd/actions/pause.lua"
    lua.write_text(lua.read_text().replace('"argocd"', '"argo-cd"'))

    stale, _ = sync.sync(fake_repo, write=False)
    assert set(stale) >= {
        "docs/gitops/argocd.md is stale",
        "charts/modelrollout-operator/crds/modelrollout.yaml is stale",
    }

    sync.sync(fake_repo, write=True)
    copied = fake_repo / "charts/modelrollout-operator/crds/modelrollout.yaml"
    assert copied.read_text() == "kind: CustomResourceDefinition\n"
    assert '"argo-cd"' in (fake_repo / "docs/gitops/argocd.md").read_text()
    assert sync.sync(fake_repo, write=False) == ([], [])


def test_sync_names_a_missing_source(fake_repo: Path) -> None:
    (fake_repo / "crds/modelrollout.yaml").unlink()
    _, errors = sync.sync(fake_repo, write=True)
    assert errors == [
        "crds/modelrollout.yaml is missing: generate it first (python -m modelrollout.api.crd)"
    ]
    proc = subprocess.run(
        [sys.executable, str(SYNC_SCRIPT), "--check", "--root", str(fake_repo)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "crds/modelrollout.yaml is missing" in proc.stderr


def test_lua_with_trailing_whitespace_is_refused(fake_repo: Path) -> None:
    lua = fake_repo / "charts/modelrollout-operator/files/argocd/health.lua"
    lua.write_text(lua.read_text().replace("local hs = {}", "local hs = {}  "))
    _, errors = sync.sync(fake_repo, write=True)
    assert any("trailing whitespace" in e for e in errors), errors
