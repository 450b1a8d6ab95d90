"""The node simulator's pure parts: service naming, process env, status and node bodies."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.lab import simpods


def pod(
    labels: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    containers: int = 1,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m-1",
            "namespace": "ml",
            "uid": "u1",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {
            "nodeName": "lab-node-0",
            "serviceAccountName": "default",
            "containers": [
                {"name": f"c{i}", "image": "lab/model", "env": env or []} for i in range(containers)
            ],
        },
    }


def service(name: str, selector: dict[str, str] | None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"selector": selector}}


class TestServiceName:
    def test_label_wins(self) -> None:
        p = pod(labels={"app": "m", "modelrollout.dev/service": "fraud-canary"})
        assert simpods.service_name_for(p, [service("a", {"app": "m"})]) == "fraud-canary"

    def test_first_matching_service_alphabetically(self) -> None:
        p = pod(labels={"app": "m", "slot": "b"})
        services = [
            service("zeta", {"app": "m"}),
            service("beta", {"app": "m", "slot": "b"}),
            service("alpha", {"app": "m", "slot": "a"}),  # selector does not match
            service("aaa", None),  # selects nothing
        ]
        assert simpods.service_name_for(p, services) == "beta"

    def test_none_matches(self) -> None:
        assert (
            simpods.service_name_for(pod(labels={"app": "x"}), [service("a", {"app": "m"})]) == ""
        )


class TestEnv:
    def test_values_and_field_refs(self) -> None:
        env: list[dict[str, Any]] = [
            {"name": "MODEL_VERSION", "value": "2"},
            {"name": "EMPTY", "value": ""},
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]
        assert simpods.container_env(pod(labels={"app": "m"}, env=env)) == {
            "MODEL_VERSION": "2",
            "EMPTY": "",
            "ME": "m-1",
            "APP": "m",
            "IP": "127.0.0.1",
        }

    def test_process_env_layers(self) -> None:
        p = pod(env=[{"name": "PORT", "value": "8080"}, {"name": "SERVICE_NAME", "value": "own"}])
        env = simpods.process_env(p, "svc", 41000, 77, {"PATH": "/bin", "PYTHONPATH": "/x"})
        assert env["PORT"] == "41000"  # the simulator's port wins: that is where it listens
        assert env["SERVICE_NAME"] == "own"  # the pod's own env wins over the derived name
        assert (env["POD_NAME"], env["POD_NAMESPACE"], env["LAB_PARENT_PID"]) == ("m-1", "ml", "77")
        assert env["PATH"] == "/bin"
        assert env["PYTHONPATH"].split(":") == [str(simpods.REPO_ROOT), "/x"]
        assert env["OPENBLAS_NUM_THREADS"] == "1"


def test_no_process_annotation() -> None:
    assert simpods.wants_process(pod())
    assert not simpods.wants_process(pod(annotations={simpods.NO_PROCESS_ANNOTATION: "true"}))


@pytest.mark.parametrize(
    ("restarts", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (50, 30.0)]
)
def test_restart_backoff(restarts: int, delay: float) -> None:
    assert simpods.restart_backoff_s(restarts) == delay


class TestPodStatus:
    def conditions(self, patch: dict[str, Any]) -> dict[str, str]:
        return {c["type"]: c["status"] for c in patch["status"]["conditions"]}

    def test_ready_patch(self) -> None:
        p = pod(containers=2)
        patch = simpods.pod_status_patch(
            p, ready=True, restarts=0, started_at="T0", now="T1", running_since="T1"
        )
        status = patch["status"]
        assert status["phase"] == "Running"
        assert status["podIP"] == "127.0.0.1"
        assert self.conditions(patch) == {
            "Initialized": "True",
            "Ready": "True",
            "ContainersReady": "True",
            "PodScheduled": "True",
        }
        assert [c["name"] for c in status["containerStatuses"]] == ["c0", "c1"]
        for c in status["containerStatuses"]:
            assert c["ready"] and c["started"]
            # the other states are nulled so a strategic merge does not keep a stale one
            assert c["state"] == {
                "running": {"startedAt": "T1"},
                "waiting": None,
                "terminated": None,
            }
        assert simpods.pod_is_ready({"status": {"conditions": status["conditions"]}})

    def test_crash_patch(self) -> None:
        last = simpods.Termination(3, "T1", "T2")
        patch = simpods.pod_status_patch(
            pod(),
            ready=False,
            restarts=1,
            started_at="T0",
            now="T2",
            running_since=None,
            waiting_reason="CrashLoopBackOff",
            last=last,
        )
        assert self.conditions(patch)["Ready"] == "False"
        (c,) = patch["status"]["containerStatuses"]
        assert c["restartCount"] == 1
        assert c["ready"] is False
        assert c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert c["lastState"]["terminated"]["exitCode"] == 3
        assert not simpods.pod_is_ready({"status": {"conditions": patch["status"]["conditions"]}})


def test_node_is_ready_untainted_and_large() -> None:
    node = simpods.node_body("lab-node-0", "T0")
    assert node["spec"] == {}
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    assert conds["MemoryPressure"] == conds["DiskPressure"] == conds["PIDPressure"] == "False"
    assert int(node["status"]["allocatable"]["pods"]) >= 1000
    heartbeat = simpods.node_conditions("T5", with_transition=False)
    assert all("lastTransitionTime" not in c and c["lastHeartbeatTime"] == "T5" for c in heartbeat)


def test_lease_is_owned_by_the_node() -> None:
    lease = simpods.lease_body("n", "uid-n", "2024-01-01T00:00:00.000000Z")
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-n"
    assert lease["spec"]["holderIdentity"] == "n"
