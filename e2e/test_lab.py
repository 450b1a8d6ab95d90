"""The lab is real: a Kubernetes 1.20 API with schema validation, watches, RBAC,
ServiceAccount tokens and running controllers, plus a Prometheus that scrapes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from e2e.lab import Lab
from e2e.lab.procs import port_open
from e2e.lab.waiting import wait_until

pytestmark = pytest.mark.lab

VERSION = "v1"
PLURAL = "widgets"


def test_server_is_kubernetes_1_20(kube_api: Any) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert (info.major, info.minor) == ("1", "20")


@pytest.fixture
def widget_group(kube_api: Any) -> Iterator[str]:
    """A namespaced test CRD (Widget) in a group of its own; yields the group."""
    group = f"g{uuid.uuid4().hex[:8]}.lab.modelrollout.dev"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "blue"]},
                },
            }
        },
    }
    crd: Any = {  # a plain manifest; the client serialises dicts as they are
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": VERSION, "served": True, "storage": True,
                 "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }  # fmt: skip
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        status = ext.read_custom_resource_definition(f"{PLURAL}.{group}").status
        conditions = (status.conditions if status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, timeout=30, message="test CRD not Established")
    yield group
    ext.delete_custom_resource_definition(f"{PLURAL}.{group}")


def _widget(name: str, spec: dict[str, Any], group: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"size": "three"}, 'spec.size in body must be of type integer: "string"'),
        ({"size": 99}, "spec.size in body should be less than or equal to 10"),
        ({"size": 2, "color": "green"}, 'spec.color: Unsupported value: "green"'),
        ({"color": "red"}, "spec.size: Required value"),
    ],
)
def test_schema_violations_are_rejected(
    kube_api: Any, widget_group: str, namespace: str, spec: dict[str, Any], error: str
) -> None:
    api = client.CustomObjectsApi(kube_api)
    body = _widget("bad", spec, widget_group)
    with pytest.raises(ApiException) as rejected:
        api.create_namespaced_custom_object(widget_group, VERSION, namespace, PLURAL, body)
    assert rejected.value.status == 422
    assert error in json.loads(rejected.value.body or "{}")["message"]


def test_valid_custom_object_is_stored_and_apiserver_survives(
    lab: Lab, kube_api: Any, widget_group: str, namespace: str
) -> None:
    apiserver_pid = lab.state.components["apiserver"].pid
    api = client.CustomObjectsApi(kube_api)
    body = _widget("good", {"size": 3, "color": "blue"}, widget_group)
    api.create_namespaced_custom_object(widget_group, VERSION, namespace, PLURAL, body)
    # Debian's vendored reflect2 1.0.1 made the apiserver segfault right here.
    stored: Any = api.get_namespaced_custom_object(widget_group, VERSION, namespace, PLURAL, "good")
    assert stored["spec"] == {"size": 3, "color": "blue"}
    apiserver = next(s for s in lab.status() if s.name == "apiserver")
    assert apiserver.healthy, apiserver.detail
    assert apiserver.pid == apiserver_pid


def test_watch_sees_a_change(kube_api: Any, widget_group: str, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)
    body = _widget("watched", {"size": 1}, widget_group)
    created: Any = api.create_namespaced_custom_object(
        widget_group, VERSION, namespace, PLURAL, body
    )
    api.patch_namespaced_custom_object(
        widget_group, VERSION, namespace, PLURAL, "watched", {"spec": {"size": 7}}
    )
    events = watch.Watch().stream(  # type: ignore[no-untyped-call]
        api.list_namespaced_custom_object,
        widget_group,
        VERSION,
        namespace,
        PLURAL,
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=10,
    )
    first: Any = next(events)
    assert first["type"] == "MODIFIED"
    assert first["object"]["metadata"]["name"] == "watched"
    assert first["object"]["spec"]["size"] == 7


def test_service_account_is_denied_until_a_role_binding_allows_it(
    lab: Lab, kube_api: Any, namespace: str
) -> None:
    token = lab.mint_token(namespace, "reader")
    user = f"system:serviceaccount:{namespace}:reader"
    with lab.api_client(token) as sa_client:
        core = client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        message = json.loads(denied.value.body or "{}")["message"]
        assert f'User "{user}" cannot list resource "configmaps"' in message

        rbac = client.RbacAuthorizationV1Api(kube_api)
        rule = client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])
        meta = client.V1ObjectMeta(name="read-configmaps")
        rbac.create_namespaced_role(namespace, client.V1Role(metadata=meta, rules=[rule]))
        binding = client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader-reads-configmaps"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        )
        rbac.create_namespaced_role_binding(namespace, binding)

        def allowed() -> bool:
            core.list_namespaced_config_map(namespace)
            return True

        wait_until(allowed, timeout=15, message="RoleBinding did not take effect")
        with pytest.raises(ApiException) as elsewhere:
            core.list_namespaced_config_map("default")
        assert elsewhere.value.status == 403


def test_kubectl_create_token_authenticates_as_the_service_account(
    lab: Lab, namespace: str
) -> None:
    lab.kubectl("-n", namespace, "create", "serviceaccount", "cli")
    minted = subprocess.run(
        [str(lab.bin_dir / "kubectl1.35"), f"--kubeconfig={lab.kubeconfig}",
         "-n", namespace, "create", "token", "cli", "--duration=10m"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    denied = lab.kubectl("-n", namespace, "get", "pods", token=minted.stdout.strip(), check=False)
    assert denied.returncode != 0
    assert f'User "system:serviceaccount:{namespace}:cli" cannot list' in denied.stderr


def _query(lab: Lab, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": promql})
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_itself(lab: Lab) -> None:
    wait_until(
        lambda: [r["value"][1] for r in _query(lab, 'up{job="prometheus"}')] == ["1"],
        timeout=30,
        message='up{job="prometheus"} is not 1',
    )


def test_prometheus_scrapes_file_sd_targets(lab: Lab) -> None:
    marker = uuid.uuid4().hex[:8]
    target = lab.prometheus_url.removeprefix("http://")
    targets_file = lab.prometheus_targets_dir / f"test-{marker}.json"
    targets_file.write_text(json.dumps([{"targets": [target], "labels": {"lab_test": marker}}]))
    try:
        wait_until(
            lambda: [r["value"][1] for r in _query(lab, f'up{{lab_test="{marker}"}}')] == ["1"],
            timeout=30,
            message=f"target from {targets_file.name} not scraped",
        )
    finally:
        targets_file.unlink()


def test_deployment_without_a_fitting_node_leaves_pods_pending(
    kube_api: Any, namespace: str
) -> None:
    labels = {"app": "unschedulable"}
    pod_spec = client.V1PodSpec(
        containers=[client.V1Container(name="main", image="registry.invalid/none:0")],
        node_selector={"modelrollout.dev/no-such-node": "true"},
    )
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="unschedulable"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec
            ),
        ),
    )
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, deployment)
    core = client.CoreV1Api(kube_api)

    def unschedulable_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=unschedulable").items
        return [
            p
            for p in pods
            if any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in (p.status.conditions if p.status else None) or []
            )
        ]

    # ReplicaSet controller made the pods, the scheduler found no node for them.
    wait_until(lambda: len(unschedulable_pods()) == 2, timeout=30, message="no 2 pending pods")
    replica_sets: list[Any] = (
        client.AppsV1Api(kube_api).list_namespaced_replica_set(namespace).items
    )
    assert [rs.metadata.owner_references[0].name for rs in replica_sets] == ["unschedulable"]
    pods: list[Any] = unschedulable_pods()
    for pod in pods:
        assert pod.status.phase == "Pending"
        assert pod.spec.node_name is None
        assert pod.metadata.owner_references[0].name == replica_sets[0].metadata.name


def test_a_component_can_be_stopped_and_started(lab: Lab) -> None:
    before = lab.state.components["scheduler"]
    lab.stop_component("scheduler")
    assert before.port is not None
    assert not port_open(before.port)
    scheduler = next(s for s in lab.status() if s.name == "scheduler")
    assert not scheduler.healthy
    lab.start_component("scheduler")
    scheduler = next(s for s in lab.status() if s.name == "scheduler")
    assert scheduler.healthy, scheduler.detail
    assert (scheduler.port, scheduler.pid != before.pid) == (before.port, True)


def test_cli_status_and_env_file(lab: Lab) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "e2e.lab", "status"],
        cwd=lab.paths.root, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "apiserver" in status.stdout
    sourced = subprocess.run(
        ["bash", "-c", f". {lab.paths.env_file} && kubectl get namespace default -o name"],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert sourced.stdout.strip() == "namespace/default", sourced.stderr


PAUSER = """
import sys
import threading
from e2e.lab import Lab
lab = Lab()
lab.stop_component("scheduler")
print("stopped", flush=True)
sys.stdin.readline()
lab.start_component("scheduler")
"""


def test_up_elsewhere_waits_for_a_component_stopped_on_purpose(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    etcd_pid = lab.state.components["etcd"].pid
    caplog.set_level(logging.INFO, logger="e2e.lab")
    pauser = subprocess.Popen(
        [sys.executable, "-c", PAUSER],
        cwd=lab.paths.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert pauser.stdin is not None and pauser.stdout is not None
    try:
        assert pauser.stdout.readline().strip() == "stopped"
        upper = threading.Thread(target=Lab().up)
        upper.start()
        wait_until(
            lambda: "waiting: stopped on purpose: scheduler" in caplog.text,
            timeout=30,
            message="up() did not wait for the paused scheduler",
        )
        assert upper.is_alive()
        pauser.stdin.write("\n")
        pauser.stdin.flush()
        assert pauser.wait(timeout=60) == 0
        upper.join(timeout=60)
        assert not upper.is_alive()
    finally:
        pauser.kill()
    # the lab was reused, not replaced as unhealthy
    assert lab.state.components["etcd"].pid == etcd_pid
    assert lab.healthy()
