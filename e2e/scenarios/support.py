"""Building blocks of the end-to-end scenarios: manifests, routes, load, Prometheus.

Everything here talks to the real lab: the apiserver (through the admin client), the lab
gateway (traffic split exactly as the route objects say) and Prometheus (scraping the real
model-server processes the node simulator runs for each pod).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

Routing = Literal["gatewayAPI", "istio", "replicas"]
GW = ("gateway.networking.k8s.io", "v1", "httproutes")
VS = ("networking.istio.io", "v1beta1", "virtualservices")

FAST_STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "6s"},
    {"name": "canary-5", "weight": 5, "duration": "6s"},
    {"name": "canary-25", "weight": 25, "duration": "6s"},
    {"name": "full", "weight": 100},
]


def rollout_manifest(
    name: str,
    version: str,
    *,
    routing: Routing = "gatewayAPI",
    stages: list[dict[str, Any]] | None = None,
    metrics: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    replicas: int = 1,
    interval: str = "2s",
    failure_limit: int = 0,
    inconclusive_limit: int = 3,
    on_inconclusive: str = "Hold",
    webhooks: list[dict[str, Any]] | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ModelRollout for the lab's model server. ``env`` carries the server's fault knobs
    (FAULT_ERROR_RATE, FAULT_LATENCY_MS, FAULT_LATENCY_FACTOR, FAULT_SHUFFLED_LABELS, ...)."""
    traffic: dict[str, Any] = {
        "gatewayAPI": {"gatewayAPI": {"httpRoute": name}},
        "istio": {"istio": {"virtualService": name}},
        "replicas": {"replicas": {}},
    }[routing]
    spec: dict[str, Any] = {
        "model": {"name": "breast-cancer", "version": version, "uri": f"s3://models/bc/{version}"},
        "replicas": replicas,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "ghcr.io/example/sklearn-server:1.0",
                        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    }
                ]
            }
        },
        "service": {"port": 8080},
        "trafficRouting": traffic,
        "stages": copy.deepcopy(stages if stages is not None else FAST_STAGES),
        "analysis": {
            "interval": interval,
            "failureLimit": failure_limit,
            "inconclusiveLimit": inconclusive_limit,
            "onInconclusive": on_inconclusive,
            "metrics": metrics or [],
        },
        "progressDeadline": "2m",
    }
    if webhooks:
        spec["webhooks"] = webhooks
    spec.update(extra_spec or {})
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name},
        "spec": spec,
    }


def httproute(name: str) -> dict[str, Any]:
    """A user's HTTPRoute: rule 0 is managed by the operator, rule 1 is the user's own."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "labels": {"team": "risk"}},
        "spec": {
            "parentRefs": [{"name": "lab-gateway"}],
            "hostnames": [f"{name}.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/predict"}}],
                    "backendRefs": [{"name": f"{name}-a", "port": 8080, "weight": 100}],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"add": [{"name": "x-legacy", "value": "1"}]},
                        }
                    ],
                    "backendRefs": [{"name": "legacy-scorer", "port": 80}],
                },
            ],
        },
    }


def virtualservice(name: str) -> dict[str, Any]:
    """A user's VirtualService: entry "primary" is managed, entry "legacy" is the user's own."""
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [f"{name}.example.com"],
            "http": [
                {
                    "name": "legacy",
                    "match": [{"uri": {"prefix": "/legacy"}}],
                    "route": [{"destination": {"host": "legacy-scorer"}}],
                },
                {
                    "name": "primary",
                    "route": [
                        {
                            "destination": {"host": f"{name}-a", "port": {"number": 8080}},
                            "weight": 100,
                        }
                    ],
                },
            ],
        },
    }


def create_route(
    api: k8s.ApiClient, namespace: str, routing: Routing, name: str
) -> dict[str, Any] | None:
    """Create the route object a rollout with ``routing`` names (none for replica ratio)."""
    custom = k8s.CustomObjectsApi(api)
    if routing == "gatewayAPI":
        body = httproute(name)
        return dict(custom.create_namespaced_custom_object(*GW[:2], namespace, GW[2], body))
    if routing == "istio":
        body = virtualservice(name)
        return dict(custom.create_namespaced_custom_object(*VS[:2], namespace, VS[2], body))
    return None


def read_route(api: k8s.ApiClient, namespace: str, routing: Routing, name: str) -> dict[str, Any]:
    group, version, plural = GW if routing == "gatewayAPI" else VS
    got: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        group, version, namespace, plural, name
    )
    return got


def gateway_kind(routing: Routing) -> str:
    return {"gatewayAPI": "httproute", "istio": "virtualservice"}.get(routing, "")


@dataclass
class Gateway:
    """Client of the lab gateway (see e2e/lab/gateway.py for its API)."""

    url: str

    def _path(self, namespace: str, routing: Routing, name: str) -> str:
        return f"{namespace}/{gateway_kind(routing)}/{name}"

    def start_load(self, namespace: str, routing: Routing, name: str, rps: float = 40) -> None:
        r = httpx.put(
            f"{self.url}/load/{self._path(namespace, routing, name)}",
            json={"rps": rps, "path": "/predict", "duration_s": 900},
            timeout=10,
        )
        r.raise_for_status()

    def stop_load(self, namespace: str, routing: Routing, name: str) -> None:
        httpx.delete(f"{self.url}/load/{self._path(namespace, routing, name)}", timeout=10)

    def stats(self, namespace: str, routing: Routing, name: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/stats/{self._path(namespace, routing, name)}", timeout=10)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def reset_stats(self, namespace: str, routing: Routing, name: str) -> dict[str, Any]:
        r = httpx.delete(f"{self.url}/stats/{self._path(namespace, routing, name)}", timeout=10)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


def served(stats: dict[str, Any], service: str) -> int:
    return int(((stats.get("backends") or {}).get(service) or {}).get("served") or 0)


def mirrored(stats: dict[str, Any], service: str) -> int:
    return int(((stats.get("backends") or {}).get(service) or {}).get("mirrored") or 0)


def within_binomial(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """``hits`` out of ``n`` is consistent with probability ``p`` (normal approximation)."""
    if n == 0:
        return False
    return abs(hits / n - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def prom_value(prometheus_url: str, query: str) -> float | None:
    """One instant value from the lab's Prometheus, None when there is no (finite) data."""
    r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def history_events(status: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(event, to-stage) per audit entry, in order."""
    return [(h["event"], h.get("to")) for h in status.get("history") or []]


def stages_entered(status: dict[str, Any]) -> list[str]:
    return [
        h["to"] for h in status.get("history") or [] if h["event"] == "StageEntered" and h.get("to")
    ]


def pod_uids(api: k8s.ApiClient, namespace: str, rollout: str, slot: str) -> set[str]:
    pods = k8s.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"modelrollout.dev/rollout={rollout},modelrollout.dev/slot={slot}"
    )
    return {p.metadata.uid for p in pods.items if not p.metadata.deletion_timestamp}


def deployment_replicas(api: k8s.ApiClient, namespace: str, name: str) -> int | None:
    try:
        dep = k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return int(dep.spec.replicas or 0)


# --------------------------------------------------------------------------- routing & analysis
# Helpers of test_routing_split.py and test_analysis.py (appended; the ones above are shared).


def traffic_routing(routing: Routing, name: str) -> dict[str, Any]:
    """``spec.trafficRouting`` for the route :func:`create_route` makes: the VirtualService's
    managed entry is "primary" (its first entry, "legacy", is the user's own)."""
    if routing == "istio":
        return {"istio": {"virtualService": name, "routeName": "primary"}}
    if routing == "gatewayAPI":
        return {"gatewayAPI": {"httpRoute": name}}
    return {"replicas": {}}


def user_rule(route: dict[str, Any], routing: Routing) -> str:
    """The user's own rule of a route :func:`create_route` made (HTTPRoute rule 1, the
    VirtualService entry "legacy"), serialised as the API server returned it (key order kept), so
    equal strings mean a byte-identical rule."""
    if routing == "gatewayAPI":
        rule = route["spec"]["rules"][1]
    else:
        [rule] = [e for e in route["spec"]["http"] if e.get("name") == "legacy"]
    return json.dumps(rule)


@dataclass(frozen=True)
class RouteSplit:
    """The managed rule of a route object: Service -> weight, Service -> mirror percent."""

    generation: int
    weights: dict[str, int]
    mirrors: dict[str, int]

    def only(self, service: str) -> bool:
        """All live traffic to ``service``, nothing mirrored."""
        live = {s: w for s, w in self.weights.items() if w > 0}
        return list(live) == [service] and not self.mirrors


def _mirror_percent(spec: dict[str, Any]) -> int:
    if spec.get("percent") is not None:
        return int(spec["percent"])
    fraction = spec.get("fraction")
    if fraction:
        numerator = int(fraction.get("numerator") or 0)
        return round(100 * numerator / int(fraction.get("denominator") or 100))
    return 100


def managed_split(api: k8s.ApiClient, namespace: str, routing: Routing, name: str) -> RouteSplit:
    """Read the route object and return the split of the rule the operator manages (HTTPRoute
    rule 0, VirtualService entry "primary")."""
    route = read_route(api, namespace, routing, name)
    generation = int(route["metadata"].get("generation") or 0)
    if routing == "gatewayAPI":
        rule = route["spec"]["rules"][0]
        refs = rule.get("backendRefs") or []
        weights = {r["name"]: int(r.get("weight", 1)) for r in refs}
        mirrored_to = {
            f["requestMirror"]["backendRef"]["name"]: _mirror_percent(f["requestMirror"])
            for f in rule.get("filters") or []
            if f.get("type") == "RequestMirror"
        }
        return RouteSplit(generation, weights, mirrored_to)
    [entry] = [e for e in route["spec"]["http"] if e.get("name") == "primary"]
    dests = entry.get("route") or []
    weights = {
        d["destination"]["host"]: int(d.get("weight", 100 if len(dests) == 1 else 0)) for d in dests
    }
    mirrors: dict[str, int] = {}
    if entry.get("mirror"):
        pct = (entry.get("mirrorPercentage") or {}).get("value", 100)
        mirrors[entry["mirror"]["host"]] = int(pct)
    return RouteSplit(generation, weights, mirrors)


def observed_generation(stats: dict[str, Any]) -> int:
    """The route generation that served the gateway's last request."""
    return int((stats.get("observed") or {}).get("generation") or 0)


def prom_range(
    prometheus_url: str, query: str, start: float, end: float, step: float
) -> list[tuple[float, float]]:
    """A range query's first series as (unix time, value) pairs, NaN/Inf dropped ([] when empty)."""
    r = httpx.get(
        f"{prometheus_url}/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": step},
        timeout=20,
    )
    r.raise_for_status()
    result = r.json()["data"]["result"]
    if not result:
        return []
    points = [(float(t), float(v)) for t, v in result[0]["values"]]
    return [(t, v) for t, v in points if math.isfinite(v)]


def history_of(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """The audit entries of one kind (StageEntered, RolledBack, AnalysisHold, ...), in order."""
    return [h for h in status.get("history") or [] if h.get("event") == event]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition of type ``kind`` ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def parse_time(stamp: str) -> float:
    """An RFC 3339 status timestamp as unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- audit chain and
# operator metrics (helpers of test_operations.py and test_plugin_and_gates.py)


def audit_problems(status: dict[str, Any]) -> list[str]:
    """What :func:`modelrollout.audit.verify` finds wrong with status.history (empty: intact)."""
    from modelrollout import audit
    from modelrollout.api.models import HistoryEntry

    entries = [HistoryEntry.model_validate(h) for h in status.get("history") or []]
    return audit.verify(entries)


def operator_metric(metrics_url: str, sample: str, **labels: str) -> float | None:
    """Sum of the operator's ``sample`` series (e.g. ``modelrollout_rollbacks_total``) whose
    labels include ``labels``; None when no such series is exposed."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(metrics_url, timeout=10)
    r.raise_for_status()
    values = [
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None
