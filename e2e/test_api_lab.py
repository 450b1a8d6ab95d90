"""The ModelRollout API against the lab's real apiserver (1.20) and kubectl (1.20).

The lab installs the CRD variant without CEL (``python -m modelrollout.api.crd --no-cel``): 1.20
knows no ``x-kubernetes-validations`` and kubectl refuses a CRD that has them (checked below).
Cross-field rules are then the operator's job (validation.py); everything the structural
schema can say, the apiserver enforces, as tests/invalid/expected.yaml records.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.lab.controlplane import Lab
from e2e.lab.waiting import wait_until
from modelrollout.api import crd
from modelrollout.api.models import (
    GROUP,
    PLURAL,
    VERSION,
    AnalysisStatus,
    Condition,
    HistoryEntry,
    MetricResult,
    ModelRef,
    ModelRolloutStatus,
    Phase,
    StageStatus,
    Verdict,
    Weights,
    status_to_wire,
)
from modelrollout.api.validation import check

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = REPO / "tests" / "invalid"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((INVALID / "expected.yaml").read_text())
MANIFESTS = sorted(p for p in INVALID.glob("*.yaml") if p.name != "expected.yaml")


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Lab:
    """The CRD without CEL rules, applied server-side (idempotent; left installed for others)."""
    lab.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=crd.render(cel=False)
    )
    lab.wait_established(crd.CRD_NAME)
    return lab


@pytest.fixture(scope="module")
def api_namespace(installed: Lab) -> Iterator[str]:
    """One namespace for this module's many small objects."""
    name = f"t-api-{uuid.uuid4().hex[:6]}"
    installed.create_namespace(name, labels={"modelrollout.dev/test": "true"})
    yield name
    installed.delete_namespace(name)


def _apply(lab: Lab, namespace: str, path: Path) -> Any:
    return lab.kubectl("apply", "-n", namespace, "-f", str(path), check=False)


def _get(lab: Lab, namespace: str, name: str) -> dict[str, Any]:
    out = lab.kubectl("get", "modelrollout", name, "-n", namespace, "-o", "json").stdout
    obj: dict[str, Any] = json.loads(out)
    return obj


def test_kubectl_1_20_refuses_the_crd_with_cel_rules(lab: Lab) -> None:
    """Why the lab needs --no-cel: kubectl validates the CRD against the 1.20 OpenAPI."""
    proc = lab.kubectl(
        "create", "--dry-run=server", "-f", str(REPO / "crds" / "modelrollout.yaml"), check=False
    )
    assert proc.returncode != 0
    assert 'unknown field "x-kubernetes-validations"' in proc.stderr


def test_the_crd_is_served_as_generated(installed: Lab) -> None:
    served = json.loads(installed.kubectl("get", "crd", crd.CRD_NAME, "-o", "json").stdout)
    generated = crd.build_crd(cel=False)
    assert served["spec"]["names"] == {**generated["spec"]["names"]}
    assert "categories" not in served["spec"]["names"]
    [version] = served["spec"]["versions"]
    [expected] = generated["spec"]["versions"]
    # Nothing of the schema was dropped or rewritten by the apiserver.
    assert version["schema"] == expected["schema"]
    assert version["additionalPrinterColumns"] == expected["additionalPrinterColumns"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_apply_and_are_stored_as_the_models_default_them(
    installed: Lab, api_namespace: str, example: Path
) -> None:
    proc = _apply(installed, api_namespace, example)
    assert proc.returncode == 0, proc.stderr
    for doc in yaml.safe_load_all(example.read_text()):
        if doc["kind"] != "ModelRollout":
            continue
        stored = _get(installed, api_namespace, doc["metadata"]["name"])
        # apiserver defaulting == pydantic defaulting, field for field.
        expected = check(doc).model_dump(mode="json", by_alias=True, exclude_none=True)
        assert stored["spec"] == expected


def test_modelrollouts_stay_out_of_get_all(installed: Lab, api_namespace: str) -> None:
    assert _apply(installed, api_namespace, REPO / "examples" / "minimal.yaml").returncode == 0
    proc = installed.kubectl("get", "all", "-n", api_namespace, "-o", "name", check=False)
    assert "modelrollout" not in proc.stdout.lower()
    names = installed.kubectl("get", "mro", "-n", api_namespace, "-o", "name").stdout
    assert "modelrollout.modelrollout.dev/sentiment" in names.split()


def _status() -> ModelRolloutStatus:
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    stable = ModelRef(name="sentiment", version="0.9.0", uri="s3://models/sentiment/0.9.0")
    candidate = ModelRef(
        name="sentiment",
        version="1.0.0",
        uri="s3://models/sentiment/1.0.0",
        digest="sha256:" + "ab" * 32,
    )
    result = MetricResult(
        name="error-rate",
        verdict=Verdict.SUCCESSFUL,
        value=0.002,
        bound="<= 0.01",
        query="sum(rate(errors[1m]))",
        measured_at=now,
    )
    return ModelRolloutStatus(
        phase=Phase.PROGRESSING,
        message="canary-5: 3 of 10 minutes, analysis passing",
        stage=StageStatus(index=1, name="canary-5", weight=5, started_at=now, ready_at=now),
        weights=Weights(stable=95, candidate=5, mirror=0),
        stable=stable,
        candidate=candidate,
        stable_version="0.9.0",
        candidate_version="1.0.0",
        stable_slot="a",
        rollout_started_at=now,
        observed_generation=1,
        conditions=[
            Condition(
                type="Ready", status="True", reason="StableServing", last_transition_time=now
            ),
            Condition(
                type="Progressing",
                status="True",
                reason="StageEntered",
                last_transition_time=now,
                observed_generation=1,
            ),
        ],
        analysis=AnalysisStatus(
            last_run_at=now, runs=3, last_verdict=Verdict.SUCCESSFUL, results=[result]
        ),
        history=[
            HistoryEntry(
                time=now,
                event="StageEntered",
                from_stage="shadow",
                to_stage="canary-5",
                reason="analysis passed",
                model=candidate,
                stable_version="0.9.0",
                metrics=[result],
                seq=2,
                prev_hash="0" * 64,
                hash="1" * 64,
            ),
        ],
    )


def test_status_round_trips_and_fills_the_printer_columns(
    installed: Lab, api_namespace: str, kube_api: Any
) -> None:
    assert _apply(installed, api_namespace, REPO / "examples" / "minimal.yaml").returncode == 0
    written = status_to_wire(_status())
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        api_namespace,
        PLURAL,
        "sentiment",
        {"status": written},
        _content_type="application/merge-patch+json",
    )
    stored = _get(installed, api_namespace, "sentiment")
    assert stored["status"] == written  # nothing pruned, nothing defaulted
    assert ModelRolloutStatus.model_validate(stored["status"]) == _status()

    table = installed.kubectl("get", "mro", "sentiment", "-n", api_namespace).stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "PHASE", "STAGE", "WEIGHT", "STABLE", "CANDIDATE", "AGE"]
    assert row.split()[:6] == ["sentiment", "Progressing", "canary-5", "5", "0.9.0", "1.0.0"]
    wide = installed.kubectl("get", "mro", "sentiment", "-n", api_namespace, "-o", "wide").stdout
    assert "MESSAGE" in wide and "canary-5: 3 of 10 minutes, analysis passing" in wide


def test_status_refuses_what_the_schema_does_not_allow(
    installed: Lab, api_namespace: str, kube_api: Any
) -> None:
    assert _apply(installed, api_namespace, REPO / "examples" / "minimal.yaml").returncode == 0
    api = client.CustomObjectsApi(kube_api)
    with pytest.raises(client.ApiException) as refused:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            api_namespace,
            PLURAL,
            "sentiment",
            {"status": {"phase": "Exploded"}},
            _content_type="application/merge-patch+json",
        )
    assert refused.value.status == 422
    assert (
        'status.phase: Unsupported value: "Exploded"' in json.loads(refused.value.body)["message"]
    )


def test_empty_strings_are_values_not_null(
    installed: Lab, api_namespace: str, kube_api: Any
) -> None:
    """Built with Go >= 1.16, the 1.20.2 apiserver took "" in a typed string field for null and
    refused it (kubernetes#99804). The lab build patches the vendored validators (see
    e2e/lab/build-control-plane.sh); real clusters accept "" and so must the lab."""
    assert _apply(installed, api_namespace, REPO / "examples" / "minimal.yaml").returncode == 0
    api = client.CustomObjectsApi(kube_api)
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        api_namespace,
        PLURAL,
        "sentiment",
        {"status": {"message": ""}},
        _content_type="application/merge-patch+json",
    )
    got = api.get_namespaced_custom_object(GROUP, VERSION, api_namespace, PLURAL, "sentiment")
    assert got["status"]["message"] == ""


def test_explain_shows_the_descriptions(installed: Lab) -> None:
    explained: dict[str, str] = {}

    def explain_ready() -> bool:
        proc = installed.kubectl("explain", "modelrollout.spec.stages", check=False)
        explained["text"] = proc.stdout
        return proc.returncode == 0 and "FIELDS:" in proc.stdout

    wait_until(explain_ready, timeout=30, message="kubectl explain to know the ModelRollout schema")
    text = " ".join(explained["text"].split())
    assert "The steps from first traffic to promotion." in text
    assert "weight <integer>" in text
    assert "Percent of live traffic served by the candidate during this stage." in text
    assert "name <string> -required-" in text


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_invalid_manifests_meet_the_apiserver_as_expected(
    installed: Lab, api_namespace: str, path: Path
) -> None:
    expected = EXPECTED[path.name]["apiserver"]
    proc = _apply(installed, api_namespace, path)
    if expected is None:
        # Structurally fine: the 1.20 apiserver stores it; the operator refuses it (validate()).
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, f"{path.name} was accepted"
        assert expected in proc.stderr
