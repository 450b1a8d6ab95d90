"""The lab's data plane on the real lab: node simulator, model servers, gateway, Prometheus.

Deployments and Services go through the real controllers and scheduler; the node simulator runs
their pods as model-server processes; the gateway splits and mirrors traffic as the HTTPRoute or
VirtualService says; Prometheus scrapes every model server.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.lab.controlplane import Lab
from e2e.lab.statefiles import PODS_FILE, read_pods
from e2e.lab.waiting import wait_until

pytestmark = pytest.mark.lab

GW_GROUP, GW_VERSION, GW_PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
IS_GROUP, IS_VERSION, IS_PLURAL = "networking.istio.io", "v1beta1", "virtualservices"


def binomial_ok(hits: float, n: int, p: float, sigmas: float = 4.0) -> bool:
    return bool(abs(hits / n - p) <= sigmas * (p * (1 - p) / n) ** 0.5)


@dataclass
class Cluster:
    lab: Lab
    api: client.ApiClient
    gw: httpx.Client

    # Typed as Any: the tests send dict bodies and read optional model fields freely.
    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> Any:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.api)

    def deploy(
        self,
        ns: str,
        name: str,
        version: str,
        *,
        replicas: int = 1,
        env: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """A model-server Deployment and a Service of the same name selecting it."""
        labels = {"app": "bc", "slot": name}
        env_list = [
            {"name": "MODEL_NAME", "value": "bc"},
            {"name": "MODEL_VERSION", "value": version},
        ]
        env_list += [{"name": k, "value": v} for k, v in (env or {}).items()]
        self.core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": name},
                "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
            },
        )
        self.apps.create_namespaced_deployment(
            ns,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations or {}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "server",
                                    "image": "lab/modelserver",
                                    "ports": [{"containerPort": 8080}],
                                    "env": env_list,
                                }
                            ]
                        },
                    },
                },
            },
        )

    def wait_ready(self, ns: str, name: str, replicas: int, timeout: float = 120.0) -> None:
        def ready() -> bool:
            d = self.apps.read_namespaced_deployment_status(name, ns)
            return bool(
                d.status.observed_generation == d.metadata.generation
                and (d.status.ready_replicas or 0) == replicas
                and (d.status.updated_replicas or 0) == replicas
                and (d.status.replicas or 0) == replicas
            )

        wait_until(
            ready, timeout=timeout, interval=0.2, message=f"deployment {ns}/{name} not ready"
        )

    def pods(self, ns: str, name: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(ns, label_selector=f"slot={name}").items)

    def pod_records(self) -> dict[str, Any]:
        return read_pods(self.lab.paths.dir / PODS_FILE)

    def create_route(self, ns: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        """Create the route and wait until the gateway uses it with every backend resolved."""
        group, version, plural = _api(kind)
        body = {
            "apiVersion": f"{group}/{version}",
            "kind": "HTTPRoute" if kind == "httproute" else "VirtualService",
            "metadata": {"name": name},
            "spec": spec,
        }
        obj = self.custom.create_namespaced_custom_object(group, version, ns, plural, body)
        self.await_gateway(ns, kind, name, int(obj["metadata"]["generation"]))

    def patch_route(self, ns: str, kind: str, name: str, spec: dict[str, Any]) -> int:
        group, version, plural = _api(kind)
        obj = self.custom.patch_namespaced_custom_object(
            group, version, ns, plural, name, {"spec": spec}
        )
        generation = int(obj["metadata"]["generation"])
        self.await_gateway(ns, kind, name, generation)
        return generation

    def await_gateway(self, ns: str, kind: str, name: str, generation: int) -> None:
        """Wait until the gateway reads this generation of the route and sees, for every
        Service it names, as many endpoints as the Service has ready pods."""
        seen: dict[str, Any] = {}

        def current() -> bool:
            r = self.gw.get(f"/routes/{ns}/{kind}/{name}")
            seen.clear()
            seen.update(r.json())
            if r.status_code != 200 or seen["generation"] < generation:
                return False
            for key, eps in seen["endpoints"].items():
                svc_ns, svc = key.split("/")
                if len(eps) != len(self.ready_pods(svc_ns, svc)):
                    return False
            return True

        wait_until(
            current,
            timeout=30,
            interval=0.1,
            message=lambda: f"gateway does not serve {ns}/{kind}/{name} gen {generation}: {seen}",
        )

    def ready_pods(self, ns: str, service: str) -> list[str]:
        try:
            selector = self.core.read_namespaced_service(service, ns).spec.selector or {}
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        if not selector:
            return []
        pods = self.core.list_namespaced_pod(
            ns, label_selector=",".join(f"{k}={v}" for k, v in selector.items())
        ).items
        return [
            p.metadata.name
            for p in pods
            if not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def drive(self, ns: str, kind: str, name: str, n: int, rps: float = 100) -> dict[str, Any]:
        """Send exactly ``n`` requests through the route at ``rps``; return the route's stats
        once every request and every mirror copy has been answered."""
        route = f"{ns}/{kind}/{name}"
        self.gw.delete(f"/stats/{route}").raise_for_status()
        put = self.gw.put(f"/load/{route}", json={"rps": rps, "max_requests": n})
        assert put.status_code == 201, put.text
        stats: dict[str, Any] = {}

        def finished() -> bool:
            stats.update(self.gw.get(f"/stats/{route}").json())
            return bool(stats["total"] == n and stats["mirrorsInFlight"] == 0)

        wait_until(
            finished,
            timeout=n / rps + 30,
            interval=0.2,
            message=lambda: f"load on {route} did not finish: {json.dumps(stats)}",
        )
        self.gw.delete(f"/load/{route}")
        return stats

    def prom(self, query: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.lab.prometheus_url}/api/v1/query", params={"query": query}, timeout=10
        )
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    def prom_by(self, query: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.prom(query)}


def _api(kind: str) -> tuple[str, str, str]:
    return (
        (GW_GROUP, GW_VERSION, GW_PLURAL)
        if kind == "httproute"
        else (IS_GROUP, IS_VERSION, IS_PLURAL)
    )


def backend_refs(**weights: int) -> list[dict[str, Any]]:
    return [{"name": svc, "port": 8080, "weight": w} for svc, w in weights.items()]


@pytest.fixture(scope="module")
def cluster(lab: Lab, kube_api: client.ApiClient) -> Iterator[Cluster]:
    assert lab.gateway_url, "the lab gateway is not running"
    with httpx.Client(base_url=lab.gateway_url, timeout=30) as gw:
        yield Cluster(lab, kube_api, gw)


@pytest.fixture(scope="module")
def shared_ns(cluster: Cluster) -> Iterator[str]:
    """One namespace for the routing tests: v1 (2 replicas) and v2 (1 replica), both healthy."""
    ns = f"t-dataplane-{uuid.uuid4().hex[:6]}"
    cluster.lab.create_namespace(ns, labels={"modelrollout.dev/test": "true"})
    try:
        cluster.deploy(ns, "bc-v1", "1", replicas=2)
        cluster.deploy(ns, "bc-v2", "2")
        cluster.wait_ready(ns, "bc-v1", 2)
        cluster.wait_ready(ns, "bc-v2", 1)
        yield ns
    finally:
        cluster.lab.delete_namespace(ns)


# --- pods, processes, controllers ------------------------------------------------------------


def test_deployment_becomes_ready_through_the_controllers(cluster: Cluster, shared_ns: str) -> None:
    pods = cluster.pods(shared_ns, "bc-v1")
    assert len(pods) == 2
    records = cluster.pod_records()
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip == "127.0.0.1"
        assert pod.spec.node_name.startswith("lab-node-")
        rec = records[f"{shared_ns}/{pod.metadata.name}"]
        assert (rec.uid, rec.ready, rec.service) == (pod.metadata.uid, True, "bc-v1")
        metrics = httpx.get(f"http://127.0.0.1:{rec.port}/metrics", timeout=5).text
        assert f'pod="{pod.metadata.name}"' in metrics
        assert 'service="bc-v1"' in metrics and 'version="1"' in metrics
    # Prometheus scrapes every model server through the file_sd targets
    query = f'up{{job="modelserver",namespace="{shared_ns}"}}'
    wait_until(
        lambda: sorted(cluster.prom_by(query, "pod").values()) == [1.0, 1.0, 1.0],
        timeout=30,
        message=f"Prometheus does not scrape the three model servers of {shared_ns}",
    )


def test_simulated_node_stays_ready_and_untainted(cluster: Cluster) -> None:
    nodes = cluster.core.list_node(label_selector="lab.modelrollout.dev/simulated=true").items
    assert nodes
    for node in nodes:
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert not node.spec.taints
        lease: Any = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            node.metadata.name, "kube-node-lease"
        )
        assert lease.spec.holder_identity == node.metadata.name


def test_deleting_a_pod_stops_its_process(cluster: Cluster, namespace: str) -> None:
    cluster.deploy(namespace, "one", "1")
    cluster.wait_ready(namespace, "one", 1)
    (pod,) = cluster.pods(namespace, "one")
    key = f"{namespace}/{pod.metadata.name}"
    rec = cluster.pod_records()[key]
    assert rec.pid is not None and rec.port is not None
    cluster.core.delete_namespaced_pod(pod.metadata.name, namespace)  # default grace period

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod(pod.metadata.name, namespace)
            return False
        except ApiException as exc:
            return bool(exc.status == 404)

    wait_until(gone, timeout=30, message=f"pod {key} was not deleted by the simulator")
    wait_until(lambda: not _alive(rec.pid), timeout=10, message=f"process {rec.pid} still runs")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{rec.port}/healthz", timeout=2)
    assert key not in cluster.pod_records()
    # the ReplicaSet replaces it, and the replacement gets its own process
    cluster.wait_ready(namespace, "one", 1)
    (new,) = cluster.pods(namespace, "one")
    assert new.metadata.name != pod.metadata.name
    assert cluster.pod_records()[f"{namespace}/{new.metadata.name}"].pid is not None


def _alive(pid: int | None) -> bool:
    try:
        os.kill(pid or 0, 0)
    except ProcessLookupError:
        return False
    return True


def test_crashing_process_makes_the_pod_not_ready_and_restarts(
    cluster: Cluster, namespace: str
) -> None:
    cluster.deploy(namespace, "crashy", "1", env={"FAULT_CRASH_AFTER_S": "3"})
    cluster.wait_ready(namespace, "crashy", 1)

    def crashed() -> bool:
        (pod,) = cluster.pods(namespace, "crashy")
        ready = next(c.status for c in pod.status.conditions if c.type == "Ready")
        (cs,) = pod.status.container_statuses
        d = cluster.apps.read_namespaced_deployment_status("crashy", namespace)
        return bool(
            ready == "False"
            and cs.restart_count >= 1
            and cs.last_state.terminated.exit_code == 3
            and not d.status.ready_replicas
        )

    wait_until(
        crashed, timeout=30, interval=0.1, message="the crashed pod was not reported not ready"
    )
    # restarted after the back-off: ready again, with the restart counted
    cluster.wait_ready(namespace, "crashy", 1, timeout=30)
    (pod,) = cluster.pods(namespace, "crashy")
    assert pod.status.container_statuses[0].restart_count >= 1


def test_no_process_pods_scale_to_a_hundred(cluster: Cluster, namespace: str) -> None:
    cluster.deploy(
        namespace,
        "many",
        "1",
        replicas=100,
        annotations={"lab.modelrollout.dev/no-process": "true"},
    )
    cluster.wait_ready(namespace, "many", 100, timeout=150)
    records = [r for k, r in cluster.pod_records().items() if k.startswith(f"{namespace}/")]
    assert len(records) == 100
    assert not any(r.process or r.port for r in records)
    targets = json.loads((cluster.lab.paths.prometheus_targets / "modelservers.json").read_text())
    assert not any(t["labels"]["namespace"] == namespace for t in targets)


# --- traffic splitting and mirroring ---------------------------------------------------------


def test_httproute_split_follows_weights_and_changes(cluster: Cluster, shared_ns: str) -> None:
    rules = [{"backendRefs": backend_refs(**{"bc-v1": 90, "bc-v2": 10})}]
    cluster.create_route(
        shared_ns, "httproute", "split", {"parentRefs": [{"name": "gw"}], "rules": rules}
    )
    n = 400
    stats = cluster.drive(shared_ns, "httproute", "split", n)
    v1, v2 = stats["backends"]["bc-v1"], stats["backends"]["bc-v2"]
    assert v1["served"] + v2["served"] == n
    assert binomial_ok(v2["served"], n, 0.10), stats
    assert v1["codes"] == {"200": v1["served"]} and v2["codes"] == {"200": v2["served"]}
    assert v1["mirrored"] == v2["mirrored"] == 0

    generation = cluster.patch_route(
        shared_ns,
        "httproute",
        "split",
        {"rules": [{"backendRefs": backend_refs(**{"bc-v1": 50, "bc-v2": 50})}]},
    )
    stats = cluster.drive(shared_ns, "httproute", "split", 200)
    assert stats["observed"]["generation"] == generation
    assert binomial_ok(stats["backends"]["bc-v2"]["served"], 200, 0.5), stats


def test_virtualservice_split_follows_weights(cluster: Cluster, shared_ns: str) -> None:
    spec = {
        "hosts": ["bc"],
        "http": [
            {
                "name": "primary",
                "route": [
                    {"destination": {"host": "bc-v1", "port": {"number": 8080}}, "weight": 90},
                    {"destination": {"host": f"bc-v2.{shared_ns}.svc.cluster.local"}, "weight": 10},
                ],
            }
        ],
    }
    cluster.create_route(shared_ns, "virtualservice", "split", spec)
    n = 400
    stats = cluster.drive(shared_ns, "virtualservice", "split", n)
    assert stats["backends"]["bc-v1"]["served"] + stats["backends"]["bc-v2"]["served"] == n
    assert binomial_ok(stats["backends"]["bc-v2"]["served"], n, 0.10), stats


def _requests_seen(cluster: Cluster, ns: str, service: str) -> float:
    """model_requests_total summed over the service's processes, read from them directly."""
    total = 0.0
    for key, rec in cluster.pod_records().items():
        if key.startswith(f"{ns}/") and rec.service == service and rec.port:
            text = httpx.get(f"http://127.0.0.1:{rec.port}/metrics", timeout=5).text
            total += sum(
                float(v) for v in re.findall(r"^model_requests_total\{.*\} (\S+)$", text, re.M)
            )
    return total


def test_mirror_copies_all_traffic_and_users_see_only_the_primary(
    cluster: Cluster, shared_ns: str
) -> None:
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "bc-v2", "port": 8080}},
    }
    rules = [{"filters": [mirror], "backendRefs": backend_refs(**{"bc-v1": 100})}]
    cluster.create_route(shared_ns, "httproute", "shadow", {"rules": rules})
    route = f"{shared_ns}/httproute/shadow"
    cluster.gw.delete(f"/stats/{route}")
    before = _requests_seen(cluster, shared_ns, "bc-v2")
    n = 100
    versions = set()
    for _ in range(n):
        r = cluster.gw.post(f"/route/{route}", content=b"")
        assert r.status_code == 200, r.text
        assert r.headers["X-Lab-Backend"] == "bc-v1"
        versions.add(r.json()["version"])
    assert versions == {"1"}
    stats: dict[str, Any] = {}

    def mirrored_all() -> bool:
        stats.update(cluster.gw.get(f"/stats/{route}").json())
        return bool(stats["backends"].get("bc-v2", {}).get("mirrored") == n)

    wait_until(mirrored_all, timeout=20, message=lambda: f"mirror copies missing: {stats}")
    assert stats["backends"]["bc-v1"]["served"] == n
    assert stats["backends"]["bc-v2"]["served"] == 0
    assert stats["backends"]["bc-v2"]["mirroredCodes"] == {"200": n}
    assert _requests_seen(cluster, shared_ns, "bc-v2") - before == n


def test_virtualservice_mirror_percentage(cluster: Cluster, shared_ns: str) -> None:
    spec = {
        "hosts": ["bc"],
        "http": [
            {
                "route": [{"destination": {"host": "bc-v1"}}],
                "mirror": {"host": "bc-v2"},
                "mirrorPercentage": {"value": 50.0},
            }
        ],
    }
    cluster.create_route(shared_ns, "virtualservice", "shadow", spec)
    n = 400
    stats = cluster.drive(shared_ns, "virtualservice", "shadow", n)
    assert stats["backends"]["bc-v1"]["served"] == n
    assert binomial_ok(stats["backends"]["bc-v2"]["mirrored"], n, 0.5), stats


def test_backend_without_ready_pods_answers_503(cluster: Cluster, shared_ns: str) -> None:
    cluster.core.create_namespaced_service(
        shared_ns,
        {
            "metadata": {"name": "empty"},
            "spec": {"selector": {"slot": "none"}, "ports": [{"port": 80}]},
        },
    )
    cluster.create_route(
        shared_ns,
        "httproute",
        "empty",
        {"rules": [{"backendRefs": [{"name": "empty", "port": 80}]}]},
    )
    r = cluster.gw.post(f"/route/{shared_ns}/httproute/empty")
    assert r.status_code == 503
    assert "has no ready endpoints" in r.headers["X-Lab-Error"]
    stats = cluster.gw.get(f"/stats/{shared_ns}/httproute/empty").json()
    assert stats["backends"]["empty"]["codes"] == {"503": 1}


# --- metrics in Prometheus -------------------------------------------------------------------


def test_prometheus_sees_error_rate_latency_and_scores_per_version(
    cluster: Cluster, namespace: str
) -> None:
    cluster.deploy(namespace, "good", "1")
    cluster.deploy(
        namespace,
        "bad",
        "2",
        env={"FAULT_ERROR_RATE": "0.2", "FAULT_LATENCY_MS": "40", "FAULT_SHUFFLED_LABELS": "true"},
    )
    cluster.wait_ready(namespace, "good", 1)
    cluster.wait_ready(namespace, "bad", 1)
    cluster.create_route(
        namespace, "httproute", "r", {"rules": [{"backendRefs": backend_refs(good=50, bad=50)}]}
    )
    stats = cluster.drive(namespace, "httproute", "r", 600, rps=150)
    served = {svc: b["served"] for svc, b in stats["backends"].items()}
    sel = f'namespace="{namespace}"'
    totals: dict[str, float] = {}

    def scraped_all() -> bool:
        totals.clear()
        totals.update(
            cluster.prom_by(f"sum by (service) (model_requests_total{{{sel}}})", "service")
        )
        return totals == {"good": served["good"], "bad": served["bad"]}

    wait_until(
        scraped_all, timeout=30, message=lambda: f"Prometheus has {totals}, gateway {served}"
    )
    errors = cluster.prom_by(
        f'sum by (version) (model_requests_total{{{sel},code="500"}})', "version"
    )
    assert errors.get("1", 0.0) == 0.0
    assert binomial_ok(int(errors["2"]), served["bad"], 0.2), (errors, served)
    assert stats["backends"]["bad"]["codes"]["500"] == errors["2"]

    p99 = cluster.prom_by(
        "histogram_quantile(0.99, sum by (le, version) "
        f"(model_request_duration_seconds_bucket{{{sel}}}))",
        "version",
    )
    p50 = cluster.prom_by(
        "histogram_quantile(0.5, sum by (le, version) "
        f"(model_request_duration_seconds_bucket{{{sel}}}))",
        "version",
    )
    # The +40 ms knob shows in the median; the tail is what a busy 2-core machine makes of it.
    assert 0.002 < p50["1"] < 0.03, p50
    assert p50["2"] > p50["1"] + 0.025, p50
    assert p99["2"] > p99["1"], p99

    # score histograms per version: the shuffled-label model is unsure, the good one is not
    middle = cluster.prom_by(
        "sum by (version) (model_prediction_score_bucket{" + sel + ',le="0.9"})'
        " - sum by (version) (model_prediction_score_bucket{" + sel + ',le="0.1"})',
        "version",
    )
    count = cluster.prom_by(f"sum by (version) (model_prediction_score_count{{{sel}}})", "version")
    assert count["1"] == served["good"] and count["2"] == stats["backends"]["bad"]["codes"]["200"]
    assert middle["1"] / count["1"] < 0.15
    assert middle["2"] / count["2"] > 0.3
