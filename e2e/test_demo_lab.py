"""``make demo`` works: ``python -m e2e.demo`` itself, run with a deadline (issue 9).

The demo takes about 1.5 minutes once the lab is up, so the test runs the real command (not
a copy of its flow) in the test's namespace, with its own Helm release, off a terminal (the
line-per-change view). It then checks through the API, independently of what the demo
printed, that 1.1 was promoted through every stage and 1.2 rolled back by the analysis.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.demo_chart import helm
from e2e.demo_flow import DemoConfig
from e2e.harness import GROUP, PLURAL, REPO, VERSION, Rollouts
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import read_route

pytestmark = pytest.mark.lab

DEADLINE_S = 420  # about 90 s measured on a busy 2-core machine


@pytest.fixture
def release(lab: Lab, namespace: str) -> Iterator[str]:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    yield name
    helm(lab, "uninstall", name, "--namespace", namespace, "--ignore-not-found")
    # The demo stops its operator and leaves its rollout for the user to look at; without an
    # operator its finalizer would keep the test's namespace from ever going away.
    with lab.api_client() as api:
        custom = k8s.CustomObjectsApi(api)
        listed: dict[str, Any] = custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, PLURAL
        )
        for item in listed["items"]:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
    shutil.rmtree(DemoConfig(namespace=namespace).work_dir(lab), ignore_errors=True)


def test_make_demo_promotes_a_good_version_and_rolls_back_a_faulty_one(
    lab: Lab, namespace: str, release: str, kube_api: k8s.ApiClient
) -> None:
    argv = [sys.executable, "-m", "e2e.demo", "--namespace", namespace]
    argv += ["--operator-namespace", namespace, "--release", release]
    proc = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]

    cfg = DemoConfig(namespace=namespace)
    status = Rollouts(kube_api, namespace).status(cfg.rollout)
    assert status["phase"] == "RolledBack"
    assert (status["stableVersion"], status["candidateVersion"]) == ("1.1", "1.2")
    assert "error-rate" in status["rollbackReason"]
    trail = [
        (h["event"], h.get("to"), (h.get("model") or {}).get("version")) for h in status["history"]
    ]
    entered_11 = [
        to for event, to, version in trail if event == "StageEntered" and version == "1.1"
    ]
    assert entered_11 == ["shadow", "canary-5", "canary-25", "full"], trail
    assert ("Promoted", None, "1.1") in trail, trail
    assert [e for e in trail if e[0] == "RolledBack"] == [("RolledBack", None, "1.2")], trail

    # 1.1 serves everything again, nothing is mirrored to the rolled-back candidate.
    rule = read_route(kube_api, namespace, "gatewayAPI", cfg.rollout)["spec"]["rules"][0]
    stable = f"{cfg.rollout}-{status['stableSlot']}"
    weights = {b["name"]: b.get("weight", 1) for b in rule["backendRefs"]}
    assert {k: v for k, v in weights.items() if v} == {stable: 100}
    assert not [f for f in rule.get("filters", []) if f["type"] == "RequestMirror"]
