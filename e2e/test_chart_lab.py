"""The Helm chart on the lab, the operator running under the chart's own ServiceAccount (issue 8).

How the chart meets a lab without a kubelet: it is installed with ``replicas: 0``, a value its
schema allows, so the chart's Deployment exists but asks for no pod (the node simulator starts
a model-server process for every pod bound to its node, so a pod would become a model server,
not an operator). Everything else is created as on a real cluster: ServiceAccount, ClusterRole,
a Role and RoleBinding in the watched namespace, the KopfPeering, the metrics Service. The
operator then runs as a local process with the chart container's exact arguments and a token
minted for the chart's ServiceAccount (see e2e/demo_chart.py), so every request it makes is
authorized by the chart's RBAC.

CRDs: the chart ships the ModelRollout CRD with CEL rules, which the 1.20 apiserver does not
know; it is installed with ``--skip-crds`` after the no-CEL variant of the same CRD
(e2e.harness.install_crd) and the chart's kopf peering CRDs. A test pins that the CRD the lab
serves is the chart's minus its CEL rules.

Layout per test: the release in its own namespace (``<ns>-op``), watching only the test's
namespace; a third namespace (``<ns>-x``) stands for everything the operator was not given.
"""

from __future__ import annotations

import contextlib
import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.demo_chart import (
    CHART,
    PEERING_CRDS,
    ChartRelease,
    install,
    install_crds,
    lab_values,
    served_crd_spec,
    without_cel,
)
from e2e.harness import GROUP, PLURAL, REPO, VERSION, Rollouts, Timeout, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import GW, Gateway, read_route, stages_entered
from modelrollout.api import crd

pytestmark = pytest.mark.lab

EXAMPLE = REPO / "examples" / "gateway-api.yaml"
NAME = "fraud-detector"  # the rollout and HTTPRoute of the example


# ----------------------------------------------------------------------------- fixtures


def _extra_namespace(lab: Lab, name: str) -> Iterator[str]:
    lab.create_namespace(name, labels={"modelrollout.dev/test": "true"})
    yield name
    lab.delete_namespace(name)


@pytest.fixture
def release_namespace(lab: Lab, namespace: str) -> Iterator[str]:
    """Where the release (ServiceAccount, Deployment) lives; the operator does not watch it."""
    yield from _extra_namespace(lab, f"{namespace}-op")


@pytest.fixture
def other_namespace(lab: Lab, namespace: str) -> Iterator[str]:
    """A namespace the operator was not given, holding a Secret."""
    for name in _extra_namespace(lab, f"{namespace}-x"):
        _secret(lab, name)
        yield name


@pytest.fixture
def release(lab: Lab, namespace: str, release_namespace: str) -> Iterator[ChartRelease]:
    install_crds(lab)
    rel = install(
        lab,
        f"mr-{uuid.uuid4().hex[:6]}",
        release_namespace,
        lab_values(lab, [namespace], logLevel="debug"),
    )
    yield rel
    rel.uninstall()


def _secret(lab: Lab, namespace: str) -> None:
    with lab.api_client() as api:
        k8s.CoreV1Api(api).create_namespaced_secret(
            namespace,
            k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="prom-creds"), string_data={"t": "x"}),
        )


# ----------------------------------------------------------------------------- the CRD


def test_the_lab_serves_the_charts_crd_minus_its_cel_rules(lab: Lab) -> None:
    install_crds(lab)
    chart_crd = yaml.safe_load((CHART / "crds" / "modelrollout.yaml").read_text())
    assert chart_crd == crd.build_crd(cel=True), "the chart's CRD is not the generated one"
    stripped = without_cel(chart_crd)
    assert stripped != chart_crd, "the chart's CRD has no CEL rules any more: drop --skip-crds"
    assert served_crd_spec(lab) == {
        k: stripped["spec"][k] for k in ("group", "names", "scope", "versions")
    }

    # The chart's kopf peering CRDs are applied unchanged.
    for doc in yaml.safe_load_all(PEERING_CRDS.read_text()):
        if not doc:
            continue
        got = json.loads(lab.kubectl("get", "crd", doc["metadata"]["name"], "-o", "json").stdout)
        assert got["spec"]["versions"] == doc["spec"]["versions"]
        assert got["spec"]["scope"] == doc["spec"]["scope"]


# ----------------------------------------------------------------------------- RBAC


def _get(lab: Lab, kind: str, name: str, namespace: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(
        lab.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return got


def test_the_charts_objects_exist_and_no_operator_pod_was_started(
    release: ChartRelease, lab: Lab, namespace: str, release_namespace: str
) -> None:
    fullname = release.deployment["metadata"]["name"]
    dep = _get(lab, "deployment", fullname, release_namespace)
    assert dep["spec"]["replicas"] == 0
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == release.service_account
    pods = json.loads(lab.kubectl("get", "pods", "-n", release_namespace, "-o", "json").stdout)
    assert not pods["items"], "a pod of the chart would have become a model-server process"
    _get(lab, "serviceaccount", release.service_account, release_namespace)

    binding = _get(lab, "rolebinding", fullname, namespace)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": release.service_account, "namespace": release_namespace}
    ]
    assert binding["roleRef"]["kind"] == "Role"
    assert release.watch_namespaces == [namespace]
    _get(lab, "kopfpeering", fullname, namespace)
    assert release.container_args[release.container_args.index("--peering") + 1] == fullname


def _code(call: Callable[[], object]) -> int:
    """200 when the call is allowed and succeeds, else the apiserver's status code."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_what_the_charts_service_account_may_and_may_not_do(
    release: ChartRelease,
    lab: Lab,
    kube_api: k8s.ApiClient,
    namespace: str,
    release_namespace: str,
    other_namespace: str,
) -> None:
    """Real requests with the ServiceAccount's token, against docs/rbac.md's table."""
    _secret(lab, namespace)
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        *GW[:2], namespace, GW[2], _example()[0]
    )
    k8s.AppsV1Api(kube_api).create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="server"),
            spec=k8s.V1DeploymentSpec(
                replicas=1,
                selector=k8s.V1LabelSelector(match_labels={"app": "server"}),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels={"app": "server"}),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="s", image="s:1")]),
                ),
            ),
        ),
    )
    core_admin = k8s.CoreV1Api(kube_api)

    def a_pod() -> dict[str, Any] | None:
        items = json.loads(lab.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        return next(iter(items["items"]), None)

    pod = str(wait_for("a pod to exec into", a_pod, timeout=60)["metadata"]["name"])
    # The exec check can fail: for an authorized caller the apiserver answers 400 (upgrade
    # required), not 403.
    assert _code(lambda: _exec(core_admin, pod, namespace)) == 400

    with lab.api_client(release.token()) as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        custom, ext = k8s.CustomObjectsApi(api), k8s.ApiextensionsV1Api(api)
        w, x, op = namespace, other_namespace, release_namespace
        mro = (GROUP, VERSION)
        deployment = k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="intruder"),
            spec=k8s.V1DeploymentSpec(
                selector=k8s.V1LabelSelector(match_labels={"a": "b"}),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels={"a": "b"}),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="c")]),
                ),
            ),
        )
        weights = {"metadata": {"labels": {"touched": "yes"}}}
        merge = "application/merge-patch+json"
        expected: list[tuple[str, Callable[[], object], int]] = [
            # Granted in the watched namespace (the token works, the Role is bound).
            ("list modelrollouts in the watched namespace",
             lambda: custom.list_namespaced_custom_object(*mro, w, PLURAL), 200),
            ("list deployments in the watched namespace",
             lambda: apps.list_namespaced_deployment(w), 200),
            ("patch the HTTPRoute", lambda: custom.patch_namespaced_custom_object(
                *GW[:2], w, GW[2], NAME, weights, _content_type=merge), 200),
            ("get a Secret by name in the watched namespace (rbac.readSecrets)",
             lambda: core.read_namespaced_secret("prom-creds", w), 200),
            ("list namespaces (kopf, namespaced mode)", lambda: core.list_namespace(), 200),
            ("list CRDs (kopf discovery)", lambda: ext.list_custom_resource_definition(), 200),
            # Never enumerate Secrets, nor read one anywhere else.
            ("list Secrets in the watched namespace",
             lambda: core.list_namespaced_secret(w), 403),
            ("get a Secret in another namespace",
             lambda: core.read_namespaced_secret("prom-creds", x), 403),
            ("list Secrets in another namespace", lambda: core.list_namespaced_secret(x), 403),
            ("get a Secret in the release's own namespace",
             lambda: core.read_namespaced_secret("prom-creds", op), 403),
            # Nothing in other namespaces.
            ("list deployments in another namespace",
             lambda: apps.list_namespaced_deployment(x), 403),
            ("create a deployment in another namespace",
             lambda: apps.create_namespaced_deployment(x, deployment), 403),
            ("list modelrollouts in another namespace",
             lambda: custom.list_namespaced_custom_object(*mro, x, PLURAL), 403),
            ("create a modelrollout in another namespace",
             lambda: custom.create_namespaced_custom_object(*mro, x, PLURAL, _example()[1]), 403),
            ("patch a modelrollout in another namespace",
             lambda: custom.patch_namespaced_custom_object(
                 *mro, x, PLURAL, NAME, weights, _content_type=merge), 403),
            ("list modelrollouts in all namespaces",
             lambda: custom.list_cluster_custom_object(*mro, PLURAL), 403),
            # No delete anywhere; routes are the user's.
            ("delete the HTTPRoute", lambda: custom.delete_namespaced_custom_object(
                *GW[:2], w, GW[2], NAME), 403),
            ("create an HTTPRoute", lambda: custom.create_namespaced_custom_object(
                *GW[:2], w, GW[2], {**_example()[0], "metadata": {"name": "other"}}), 403),
            ("delete a deployment in the watched namespace",
             lambda: apps.delete_namespaced_deployment("server", w), 403),
            ("delete a modelrollout in the watched namespace",
             lambda: custom.delete_namespaced_custom_object(*mro, w, PLURAL, NAME), 403),
            # No pods at all, so no exec.
            ("create pods/exec in the watched namespace", lambda: _exec(core, pod, w), 403),
            ("list pods in the watched namespace", lambda: core.list_namespaced_pod(w), 403),
            ("get a CRD (kopf only lists and watches)",
             lambda: ext.read_custom_resource_definition(crd.CRD_NAME), 403),
        ]  # fmt: skip
        wrong = [
            f"{what}: got {got}, want {want}"
            for what, call, want in expected
            if (got := _code(call)) != want
        ]
    assert not wrong, "\n".join(wrong)


def _exec(core: k8s.CoreV1Api, pod: str, namespace: str) -> object:
    """POST pods/exec without upgrading the connection: authorization is decided first."""
    return core.connect_post_namespaced_pod_exec(pod, namespace, command=["sh"], stdout=True)


# ----------------------------------------------------------------------------- a real rollout


def _example(version: str | None = None) -> list[dict[str, Any]]:
    """examples/gateway-api.yaml (HTTPRoute, ModelRollout) made to fit the lab and a test.

    Changed: one replica (a 2-core machine), stages of 4 s and an analysis interval of 2 s
    instead of minutes, no Prometheus address (the operator's default, i.e. the chart's
    ``prometheus.url``, is the lab's), no notification webhook (nothing listens), and the
    p99-latency check dropped (a shared 2-core machine's latency says nothing about the
    product). Stage names and weights, the route and the other checks are the example's.
    """
    route, rollout = (d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d)
    rollout = copy.deepcopy(rollout)
    spec = rollout["spec"]
    spec["replicas"] = 1
    for stage in spec["stages"]:
        if "duration" in stage:
            stage["duration"] = "4s"
    analysis = spec["analysis"]
    analysis["interval"] = "2s"
    analysis.pop("prometheus")
    analysis["metrics"] = [m for m in analysis["metrics"] if m["name"] != "p99-latency"]
    spec.pop("webhooks")
    spec["progressDeadline"] = "3m"
    if version is not None:
        spec["model"] = {
            "name": spec["model"]["name"],
            "version": version,
            "uri": f"s3://models/fraud-detector/{version}",
        }
    return [route, rollout]


def _kubectl_apply(lab: Lab, namespace: str, docs: list[dict[str, Any]]) -> None:
    lab.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def test_a_full_rollout_under_the_charts_service_account(
    release: ChartRelease,
    lab: Lab,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    operator = release.operator(release.write_kubeconfig(tmp_path / "operator.kubeconfig"))
    operator.start()
    try:
        rollouts = Rollouts(kube_api, namespace)
        peering = release.deployment["metadata"]["name"]
        wait_for(
            "the operator's keep-alive in the chart's KopfPeering",
            lambda: _get(lab, "kopfpeering", peering, namespace).get("status"),
            timeout=60,
        )

        _kubectl_apply(lab, namespace, _example())
        status = rollouts.wait_phase(NAME, "Succeeded", timeout=120)
        assert status["stableVersion"] == "2.4.0"

        gateway.start_load(namespace, "gatewayAPI", NAME, rps=30)
        # Only the ModelRollout: re-applying the route as first written would put back the
        # backend weights the operator manages (docs/gitops).
        _kubectl_apply(lab, namespace, _example("2.5.0")[1:])

        def promoted() -> dict[str, Any] | None:
            status = rollouts.status(NAME)
            done = status.get("phase") == "Succeeded" and status.get("stableVersion") == "2.5.0"
            return status if done else None

        try:
            status = wait_for("2.5.0 to be promoted", promoted, timeout=240)
        except AssertionError as exc:
            status_text = yaml.safe_dump(rollouts.status(NAME))[:4000]
            raise AssertionError(f"{exc}\nstatus:\n{status_text}") from None
        assert stages_entered(status)[-4:] == ["shadow", "canary-5", "canary-25", "full"]
        assert status["stableSlot"] == "b"
        # Analysis ran against the Prometheus the chart's values named, with data.
        verdicts = {r["name"]: r["verdict"] for r in status["analysis"]["results"]}
        # (and the built-in traffic-split check saw the full stage's traffic reach 2.5.0)
        assert verdicts == {"error-rate": "Successful", "traffic-split": "Successful"}, status[
            "analysis"
        ]
        # The Events were posted (core events: create) with this identity.
        wait_for(
            "the Promoted event",
            lambda: {"Promoted", "StageEntered"} <= {e.reason for e in rollouts.events(NAME)},
            timeout=30,
        )
        rule = read_route(kube_api, namespace, "gatewayAPI", NAME)["spec"]["rules"][0]
        weights = {b["name"]: b.get("weight", 1) for b in rule["backendRefs"]}
        assert weights.get(f"{NAME}-b") == 100 and not weights.get(f"{NAME}-a"), weights
        assert operator.alive()
    finally:
        try:
            gateway.stop_load(namespace, "gatewayAPI", NAME)
            # Deleted while the operator runs, so its finalizer does not hold the namespace.
            lab.kubectl("delete", "mro", NAME, "-n", namespace, "--wait=false", check=False)
            with contextlib.suppress(Timeout):
                wait_for("the rollout to be deleted", lambda: _gone(lab, namespace), timeout=30)
        finally:
            operator.stop()


def _gone(lab: Lab, namespace: str) -> bool:
    return not lab.kubectl("get", "mro", NAME, "-n", namespace, "--ignore-not-found").stdout
