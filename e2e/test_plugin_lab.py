"""``kubectl modelrollout`` against the lab's real apiserver (1.20), run as the console script.

No operator runs here: each test writes the status the operator would write (through the
status subresource) and checks what the plugin shows and sends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.lab.controlplane import Lab
from e2e.lab.waiting import wait_until
from modelrollout import audit
from modelrollout.api import crd
from modelrollout.api.models import (
    GROUP,
    PLURAL,
    VERSION,
    HistoryEntry,
    MetricResult,
    ModelRef,
    ModelRolloutStatus,
    Phase,
    StageStatus,
    Verdict,
    Weights,
)

pytestmark = pytest.mark.lab

PLUGIN = Path(sys.executable).with_name("kubectl-modelrollout")
NAME = "fraud"
STABLE = ModelRef(name="fraud", version="2.3.1", uri="s3://models/fraud/2.3.1")
CANDIDATE = ModelRef(
    name="fraud", version="2.4.0", uri="s3://models/fraud/2.4.0", digest="sha256:" + "ab" * 32
)


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Lab:
    """The CRD without CEL rules (1.20), applied server-side; left installed for others."""
    lab.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=crd.render(cel=False)
    )
    lab.wait_established(crd.CRD_NAME)
    return lab


@pytest.fixture
def objects(kube_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def _status(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    history: list[HistoryEntry] = []
    audit.append(
        history,
        HistoryEntry(
            time=now - timedelta(minutes=6),
            event="RolloutStarted",
            reason="spec.model changed",
            model=CANDIDATE,
        ),
    )
    audit.append(
        history,
        HistoryEntry(
            time=now - timedelta(minutes=5),
            event="StageEntered",
            from_stage="shadow",
            to_stage="canary-5",
            reason="analysis passed",
        ),
    )
    status = ModelRolloutStatus(
        phase=Phase.PROGRESSING,
        stage=StageStatus(
            index=1,
            name="canary-5",
            weight=5,
            started_at=now - timedelta(minutes=5),
            ready_at=now - timedelta(minutes=4),
        ),
        weights=Weights(stable=95, candidate=5),
        stable=STABLE,
        candidate=CANDIDATE,
        stable_version=STABLE.version,
        candidate_version=CANDIDATE.version,
        observed_generation=1,
        history=history,
    )
    status.analysis.results = [
        MetricResult(
            name="error-rate",
            verdict=Verdict.SUCCESSFUL,
            value=0.004,
            bound="<= 0.01",
            measured_at=now,
        )
    ]
    for key, value in changes.items():
        setattr(status, key, value)
    return _without_empty_strings(status.model_dump(mode="json", by_alias=True, exclude_none=True))


def _without_empty_strings(value: Any) -> Any:
    """The lab's apiserver build refuses "" in typed string fields ("must be of type string:
    null"); the models read an absent field back as "", so the hash chain still verifies."""
    if isinstance(value, dict):
        return {k: _without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_without_empty_strings(v) for v in value]
    return value


def _set_status(objects: client.CustomObjectsApi, namespace: str, status: dict[str, Any]) -> None:
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        NAME,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


@pytest.fixture
def rollout(installed: Lab, objects: client.CustomObjectsApi, namespace: str) -> Iterator[str]:
    """A ModelRollout in canary-5 with a sealed two-entry history; yields its namespace."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelRollout",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": "fraud", "version": "2.4.0", "uri": CANDIDATE.uri},
            "template": {"spec": {"containers": [{"name": "server", "image": "srv:1"}]}},
            "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
            "stages": [
                {"name": "shadow", "mirror": 100, "duration": "10m"},
                {"name": "canary-5", "weight": 5, "duration": "10m"},
                {"name": "full", "weight": 100},
            ],
        },
    }
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    _set_status(objects, namespace, _status())
    yield namespace


def plugin(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLUGIN), "--kubeconfig", str(lab.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_status_and_history(installed: Lab, rollout: str) -> None:
    listed = plugin(installed, "list", "-A")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith(rollout)]
    assert row[:7] == [rollout, NAME, "Progressing", "canary-5", "(2/3)", "5%", "2.3.1"]

    status = plugin(installed, "status", NAME, "-n", rollout)
    assert status.returncode == 0, status.stderr
    assert "Stage:       canary-5 (2/3), weight 5%, mirror 0%" in status.stdout
    assert "Time left:   5m" in status.stdout or "Time left:   6m" in status.stdout
    assert "fraud 2.4.0   s3://models/fraud/2.4.0   sha256:abab" in status.stdout
    assert "error-rate" in status.stdout and "<= 0.01" in status.stdout

    history = plugin(installed, "history", NAME, "-n", rollout, "--verify")
    assert history.returncode == 0, history.stderr
    assert history.stderr == "hash chain: ok (2 entries)\n"
    assert [line.split()[2] for line in history.stdout.splitlines()[1:]] == [
        "RolloutStarted",
        "StageEntered",
    ]


def test_history_verify_fails_on_an_edited_entry(
    installed: Lab, objects: client.CustomObjectsApi, rollout: str
) -> None:
    status = _status()
    status["history"][0]["reason"] = "rewritten"
    _set_status(objects, rollout, status)
    result = plugin(installed, "history", NAME, "-n", rollout, "--verify")
    assert result.returncode == 1
    assert "hash mismatch" in result.stderr


def test_pause_sets_the_command_annotations(
    installed: Lab, objects: client.CustomObjectsApi, rollout: str
) -> None:
    result = plugin(installed, "pause", NAME, "-n", rollout)
    assert result.returncode == 0, result.stderr
    annotations = objects.get_namespaced_custom_object(GROUP, VERSION, rollout, PLURAL, NAME)[
        "metadata"
    ]["annotations"]
    assert annotations["modelrollout.dev/command"].startswith("pause:")
    assert annotations["modelrollout.dev/command"] in result.stdout
    # Kubernetes 1.20 has no SelfSubjectReview: the kubeconfig user name is the identity.
    config = yaml.safe_load(installed.kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    assert annotations["modelrollout.dev/command-by"] == current["context"]["user"]


def test_retry_is_refused_while_progressing_and_missing_rollouts_are_named(
    installed: Lab, rollout: str
) -> None:
    retry = plugin(installed, "retry", NAME, "-n", rollout)
    assert retry.returncode == 1
    assert (
        "retry is only possible after a rollback or a failure, and it is Progressing"
        in retry.stderr
    )
    missing = plugin(installed, "status", "nope", "-n", rollout)
    assert (missing.returncode, missing.stderr) == (
        1,
        f'error: modelrollout "nope" not found in namespace "{rollout}"\n',
    )


@pytest.mark.parametrize(("phase", "code"), [(Phase.SUCCEEDED, 0), (Phase.ROLLED_BACK, 1)])
def test_watch_follows_the_rollout_to_its_end(
    installed: Lab,
    objects: client.CustomObjectsApi,
    rollout: str,
    tmp_path: Path,
    phase: Phase,
    code: int,
) -> None:
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [
                str(PLUGIN),
                "--kubeconfig",
                str(installed.kubeconfig),
                "watch",
                NAME,
                "-n",
                rollout,
                "--timeout",
                "60s",
            ],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        wait_until(lambda: "canary-5" in out.read_text(), timeout=30, message="the first frame")
        _set_status(objects, rollout, _status(stage=StageStatus(index=2, name="full", weight=100)))
        wait_until(
            lambda: out.read_text().count("--- ") >= 2,
            timeout=30,
            message="a frame for the stage change",
        )
        _set_status(
            objects,
            rollout,
            _status(phase=phase, rollback_reason="Aborted: by alice" if code else None),
        )
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    frames = out.read_text().split("--- ")[1:]
    assert len(frames) >= 3
    assert phase.value in frames[-1]
