"""Every manifest in tests/invalid is refused with its expected message (expected.yaml there):
by validate() always, and by the CRD's CEL rules where it says so. e2e/test_api_lab.py checks
the apiserver column against the lab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cel import as_admitted, failed_rules

from modelrollout.api import crd
from modelrollout.api.validation import InvalidModelRollout, check, parse_spec, validate

INVALID = Path(__file__).resolve().parents[2] / "invalid"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((INVALID / "expected.yaml").read_text())
MANIFESTS = sorted(p for p in INVALID.glob("*.yaml") if p.name != "expected.yaml")
WITH_CEL = [p for p in MANIFESTS if "cel" in EXPECTED.get(p.name, {})]


def _load(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


def test_every_manifest_has_its_expectations() -> None:
    assert sorted(EXPECTED) == [p.name for p in MANIFESTS]
    assert len(MANIFESTS) >= 25
    schema_level = [n for n, e in EXPECTED.items() if e["apiserver"]]
    operator_level = [n for n, e in EXPECTED.items() if not e["apiserver"]]
    assert len(schema_level) >= 10 and len(operator_level) >= 10


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_validate_reports_the_expected_problem(path: Path) -> None:
    manifest = _load(path)
    assert manifest["kind"] == "ModelRollout"
    expected = EXPECTED[path.name]["operator"]
    assert expected in validate(manifest)
    with pytest.raises(InvalidModelRollout) as raised:
        check(manifest)
    assert expected in str(raised.value)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_cel_is_listed_exactly_for_manifests_that_pass_the_field_checks(path: Path) -> None:
    """`cel` is given where the structural schema lets the manifest through to the CEL rules."""
    try:
        parse_spec(_load(path)["spec"])
        parsed = True
    except InvalidModelRollout:
        parsed = False
    assert parsed == ("cel" in EXPECTED[path.name])


@pytest.mark.parametrize("path", WITH_CEL, ids=lambda p: p.stem)
def test_cel_rules_reject_what_they_should(path: Path) -> None:
    root = crd.openapi_schema(cel=True)
    fired = {message for _, message in failed_rules(as_admitted(_load(path), root), root)}
    assert fired == set(EXPECTED[path.name]["cel"])
