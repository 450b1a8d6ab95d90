"""The Helm chart: lint, render with several value sets, and check what comes out.

Runs the real helm (v4) binary; see tests/unit/chart/helm.py for where it comes from.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
import yaml

from modelrollout.cli.operator import build_parser, limits_from
from modelrollout.health import Limits
from tests.unit.chart.helm import REPO
from tests.unit.chart.rendering import (
    CHART,
    FULLNAME,
    RELEASE_NAMESPACE,
    HelmRun,
    Manifest,
    Render,
    effective_values,
    of_kind,
    only,
)

DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["ml", "ml-staging"]},
    "standalone": {"leaderElection": {"enabled": False}},
    "ha": {"replicas": 3, "labelSelector": "modelrollout.dev/shard=a"},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "namespaced-minimal": {
        "watchNamespaces": ["ml"],
        "leaderElection": {"enabled": False},
        "rbac": {"readSecrets": False},
    },
}


def _operator_container(docs: list[Manifest]) -> dict[str, Any]:
    deployment = only(docs, "Deployment", FULLNAME)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(run_helm: HelmRun, name: str) -> None:
    proc = run_helm("lint", VALUE_SETS[name], "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- Deployment


HEALTH_ARGS = [
    "--liveness-loop-stall", "30",
    "--liveness-watch-down", "120",
    "--liveness-reconcile-stall", "300",
    "--liveness-exit-after", "60",
]  # fmt: skip


def test_default_args_watch_all_namespaces_with_peering(render: Render) -> None:
    container = _operator_container(render({}))
    assert container["args"] == [
        "--all-namespaces",
        "--prometheus-url", DEFAULT_PROMETHEUS,
        "--log-level", "info",
        "--log-format", "json",
        "--metrics-port", "8081",
        "--peering", FULLNAME,
        *HEALTH_ARGS,
    ]  # fmt: skip


def test_args_follow_values(render: Render) -> None:
    container = _operator_container(
        render(
            {
                "watchNamespaces": ["ml", "ml-staging"],
                "leaderElection": {"enabled": False},
                "labelSelector": "team=fraud",
                "prometheus": {"url": "https://prom.example:9443"},
                "logLevel": "debug",
                "logFormat": "console",
                "metrics": {"port": 9100},
                "extraArgs": ["--history-limit", "50"],
            }
        )
    )
    assert container["args"] == [
        "--namespace", "ml",
        "--namespace", "ml-staging",
        "--prometheus-url", "https://prom.example:9443",
        "--log-level", "debug",
        "--log-format", "console",
        "--metrics-port", "9100",
        "--standalone",
        *HEALTH_ARGS,
        "--selector", "team=fraud",
        "--history-limit", "50",
    ]  # fmt: skip
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_args_are_accepted_by_the_operator_cli(render: Render, name: str) -> None:
    """The Deployment's args parse with the operator's real argument parser."""
    values = effective_values(VALUE_SETS[name])
    container = _operator_container(render(VALUE_SETS[name]))
    args = build_parser().parse_args(["run", *container["args"]])
    assert args.namespace == values["watchNamespaces"]
    assert args.all_namespaces is (not values["watchNamespaces"])
    assert args.prometheus_url == values["prometheus"]["url"]
    assert args.metrics_port == values["metrics"]["port"]
    assert args.log_level == values["logLevel"] and args.log_format == values["logFormat"]
    health = values["health"]
    assert limits_from(args) == Limits(
        loop_stall_s=health["loopStallSeconds"],
        watch_down_s=health["watchDownSeconds"],
        reconcile_stall_s=health["reconcileStallSeconds"],
        exit_after_s=health["exitAfterSeconds"],
    )
    if values["leaderElection"]["enabled"]:
        assert (args.peering, args.standalone) == (FULLNAME, False)
    else:
        assert (args.peering, args.standalone) == (None, True)


def test_security_context_is_restricted(render: Render) -> None:
    docs = render({})
    pod = only(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = _operator_container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    # the only writable place is a small in-memory /tmp
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
    ]
    assert pod["serviceAccountName"] == FULLNAME


def test_liveness_probe_hits_healthz_on_the_metrics_port(render: Render) -> None:
    container = _operator_container(render({"metrics": {"port": 9000}}))
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert probe["periodSeconds"] == 20 and probe["failureThreshold"] == 3
    assert {"name": "metrics", "containerPort": 9000, "protocol": "TCP"} in container["ports"]


def test_image_defaults_to_app_version_and_digest_pins_it(render: Render) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = _operator_container(render({}))["image"]
    assert image == f"ghcr.io/modelrollout/modelrollout-operator:{app_version}"
    digest = "sha256:" + "a" * 64
    pinned = _operator_container(render({"image": {"tag": "x", "digest": digest}}))["image"]
    assert pinned == f"ghcr.io/modelrollout/modelrollout-operator@{digest}"


def test_scheduling_values_reach_the_pod(render: Render) -> None:
    values = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    }  # fmt: skip
    docs = render(values)
    pod = only(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert _operator_container(docs)["resources"] == values["resources"]


# --------------------------------------------------------------------------- RBAC

_ROW = re.compile(r"^\| `(?P<group>[^`]*)`[^|]*\| `(?P<resource>[^`]+)` \| (?P<verbs>[^|]+) \|"
                  r" (?P<scope>[^|]+) \| (?P<when>[^|]+) \|")  # fmt: skip

Rule = tuple[str, str, frozenset[str]]


def _documented_rules() -> list[dict[str, Any]]:
    rows = []
    for line in (REPO / "docs" / "rbac.md").read_text().splitlines():
        m = _ROW.match(line)
        if m:
            verbs = [v.strip() for v in m["verbs"].split(",")]
            rows.append(
                {
                    "rule": (m["group"], m["resource"], frozenset(verbs)),
                    "verbs": verbs,
                    "scope": m["scope"].strip(),
                    "when": [w.strip() for w in m["when"].split(",")],
                }
            )
    assert len(rows) >= 10, "the rule table in docs/rbac.md was not found"
    return rows


def _holds(condition: str, values: dict[str, Any]) -> bool:
    return bool(
        {
            "always": True,
            "rbac.readSecrets": values["rbac"]["readSecrets"],
            "leaderElection.enabled": values["leaderElection"]["enabled"],
            "watchNamespaces set": bool(values["watchNamespaces"]),
            "watchNamespaces empty": not values["watchNamespaces"],
        }[condition]
    )


def _expected(values: dict[str, Any]) -> tuple[Counter[Rule], Counter[Rule]]:
    """(ClusterRole rules, per-namespace Role rules) that docs/rbac.md promises."""
    cluster: Counter[Rule] = Counter()
    namespaced: Counter[Rule] = Counter()
    for row in _documented_rules():
        if not all(_holds(c, values) for c in row["when"]):
            continue
        if row["scope"] == "cluster" or not values["watchNamespaces"]:
            cluster[row["rule"]] += 1
        else:
            assert row["scope"] == "watched namespaces", row
            namespaced[row["rule"]] += 1
    return cluster, namespaced


def _rules(role: Manifest) -> Counter[Rule]:
    out: Counter[Rule] = Counter()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert len(rule["apiGroups"]) == 1 and len(rule["resources"]) == 1, rule
        assert len(set(rule["verbs"])) == len(rule["verbs"]), rule
        out[(rule["apiGroups"][0], rule["resources"][0], frozenset(rule["verbs"]))] += 1
    return out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_rules_are_exactly_the_documented_ones(render: Render, name: str) -> None:
    values = effective_values(VALUE_SETS[name])
    docs = render(VALUE_SETS[name])
    want_cluster, want_namespaced = _expected(values)

    assert _rules(only(docs, "ClusterRole", FULLNAME)) == want_cluster
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
    for role in roles:
        assert _rules(role) == want_namespaced, role["metadata"]["namespace"]

    for rule in [*want_cluster, *want_namespaced]:
        assert "*" not in rule[0] and "*" not in rule[1] and "*" not in rule[2]
        assert not ({"delete", "deletecollection", "escalate", "bind", "impersonate"} & rule[2])


def test_rbac_names_the_shipped_crd() -> None:
    """The ModelRollout rules use the CRD's real group and plural, and its status subresource
    exists (so the status patch goes through modelrollouts/status)."""
    crd = yaml.safe_load((CHART / "crds" / "modelrollout.yaml").read_text())
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    rules = {r["rule"][:2] for r in _documented_rules() if r["rule"][0] == group}
    assert rules == {(group, plural), (group, f"{plural}/status"), (group, f"{plural}/finalizers")}
    assert all("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])


@pytest.mark.parametrize("name", ["defaults", "namespaced"])
def test_bindings_tie_the_roles_to_the_service_account(render: Render, name: str) -> None:
    values = effective_values(VALUE_SETS[name])
    docs = render(VALUE_SETS[name])
    subject = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    sa = only(docs, "ServiceAccount", FULLNAME)
    assert sa["metadata"]["namespace"] == RELEASE_NAMESPACE
    crb = only(docs, "ClusterRoleBinding", FULLNAME)
    assert crb["subjects"] == [subject]
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME,
    }  # fmt: skip
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(values["watchNamespaces"])
    for binding in bindings:
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == FULLNAME


def test_rbac_can_be_left_to_the_cluster_admin(render: Render) -> None:
    docs = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mr"}})
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mr"


# --------------------------------------------------------------------------- peering, PDB


def test_peering_object_matches_the_mode(render: Render) -> None:
    cluster = render({})
    peering = only(cluster, "ClusterKopfPeering", FULLNAME)
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert not of_kind(cluster, "KopfPeering")

    namespaced = render(VALUE_SETS["namespaced"])
    peerings = of_kind(namespaced, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "ml-staging"]
    assert {p["metadata"]["name"] for p in peerings} == {FULLNAME}
    assert not of_kind(namespaced, "ClusterKopfPeering")

    standalone = render(VALUE_SETS["standalone"])
    assert not of_kind(standalone, "KopfPeering") and not of_kind(standalone, "ClusterKopfPeering")


def test_pdb_only_with_several_replicas(render: Render) -> None:
    assert not of_kind(render({}), "PodDisruptionBudget")
    docs = render(VALUE_SETS["ha"])
    pdb = only(docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert only(docs, "Deployment")["spec"]["replicas"] == 3


def test_peering_crds_ship_in_the_chart() -> None:
    crds = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text())
        if d
    }
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        # no status subresource: kopf then patches the keep-alives through the main resource,
        # which is what the `patch` verb in docs/rbac.md covers
        assert "subresources" not in version


# --------------------------------------------------------------------------- monitoring


def test_monitoring_objects_are_off_by_default(render: Render) -> None:
    kinds = {d["kind"] for d in render({})}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    docs = render(VALUE_SETS["monitoring"])
    monitor = only(docs, "ServiceMonitor", FULLNAME)
    service = only(docs, "Service", f"{FULLNAME}-metrics")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == 8081
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


ALERTS = ("ModelRolloutStuck", "ModelRolloutRolledBack", "ModelRolloutAnalysisErrors")
OPERATOR_METRICS = {
    "modelrollout_rollouts",
    "modelrollout_stage_transitions_total",
    "modelrollout_analysis_verdicts_total",
    "modelrollout_rollbacks_total",
    "modelrollout_reconcile_duration_seconds",
    "modelrollout_prometheus_query_duration_seconds",
    "modelrollout_prometheus_query_errors_total",
}


def test_operator_exposes_the_metrics_the_alerts_and_dashboard_use() -> None:
    from modelrollout.observability import OperatorMetrics

    exposed = set()
    for family in OperatorMetrics().registry.collect():
        exposed.add(f"{family.name}_total" if family.type == "counter" else family.name)
    assert exposed >= OPERATOR_METRICS


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bmodelrollout_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_prometheus_rule_alerts_link_their_runbooks(render: Render) -> None:
    docs = render({"prometheusRule": {"enabled": True, "stuckAfter": "2h"}})
    (group,) = only(docs, "PrometheusRule", FULLNAME)["spec"]["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) == set(ALERTS)
    for alert, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"/docs/runbooks/{alert}.md"), url
        assert (REPO / "docs" / "runbooks" / f"{alert}.md").is_file()
        assert _metric_names(rule["expr"]) <= OPERATOR_METRICS, rule["expr"]
        assert rule["labels"]["severity"] == "warning"
        # Prometheus templating survives Helm's
        assert "{{" not in rule["expr"]
    assert "[2h]" in rules["ModelRolloutStuck"]["expr"]
    assert "{{ $labels.rollout }}" in rules["ModelRolloutRolledBack"]["annotations"]["summary"]


def test_grafana_dashboard_uses_only_operator_metrics(render: Render) -> None:
    docs = render(VALUE_SETS["monitoring"])
    configmap = only(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["modelrollout.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used == OPERATOR_METRICS
    assert dashboard["uid"] == "modelrollout-operator"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("name", ["defaults", "namespaced", "standalone", "ha"])
def test_notes_describe_the_mode(run_helm: HelmRun, name: str) -> None:
    values = effective_values(VALUE_SETS[name])
    proc = run_helm(
        "install", VALUE_SETS[name], "rel", str(CHART), "-n", RELEASE_NAMESPACE, "--dry-run=client"
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    if values["watchNamespaces"]:
        assert f"namespaces {', '.join(values['watchNamespaces'])} (a Role in each)" in notes
    else:
        assert "all namespaces (ClusterRole)" in notes
    if values["leaderElection"]["enabled"]:
        assert f'kopf peering "{FULLNAME}" ({values["replicas"]} replica(s), one active)' in notes
    else:
        assert "standalone (1 replica)" in notes
    assert f"deployment/{FULLNAME}" in notes


# --------------------------------------------------------------------------- schema

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicas": -1}, "/replicas"),
    ({"replicas": "two"}, "/replicas"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"replica": 2}, "'replica' not allowed"),
    ({"image": {"tag": 5}}, "/image/tag"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"watchNamespaces": ["Bad_NS"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": "ml"}, "/watchNamespaces"),
    ({"metrics": {"port": 80}}, "/metrics/port"),
    ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
    ({"labelSelector": "no-equals-sign"}, "/labelSelector"),
    ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
    ({"replicas": 2, "leaderElection": {"enabled": False}}, "/leaderElection/enabled"),
    ({"serviceMonitor": {"enabled": True, "interval": "often"}}, "/serviceMonitor/interval"),
    ({"rbac": {"readSecret": False}}, "'readSecret' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(run_helm: HelmRun, values: dict[str, Any], message: str) -> None:
    proc = run_helm("template", values, "rel", str(CHART))
    assert proc.returncode != 0, f"accepted {values}"
    assert "schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_service_monitor_without_metrics_service_fails_clearly(run_helm: HelmRun) -> None:
    values = {"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}}
    proc = run_helm("template", values, "rel", str(CHART))
    assert proc.returncode != 0
    assert "serviceMonitor.enabled needs metrics.service.enabled" in proc.stderr


def test_values_yaml_documents_every_key() -> None:
    """Every value (a key with a value on its line) has a comment right above it, unless it
    sits inside a free-form Kubernetes block (resources, securityContext, ...)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):(.*)$", line)
        if not m or not m[3].strip():
            continue  # not a key, or a group of keys
        if lines[i - 1].strip().startswith("#") or _in_free_form_block(lines, i, len(m[1])):
            continue
        undocumented.append(line.strip())
    assert not undocumented, f"values without a comment: {undocumented}"


FREE_FORM = {"resources", "podSecurityContext", "securityContext", "livenessProbe", "labels"}


def _in_free_form_block(lines: list[str], index: int, indent: int) -> bool:
    for j in range(index - 1, -1, -1):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", lines[j])
        if m and len(m[1]) < indent:
            if m[2] in FREE_FORM:
                return True
            indent = len(m[1])
    return False
