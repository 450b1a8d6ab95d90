"""examples/gitops/: the Flux manifests fit together, the chart accepts their values, and the
example rollout is valid against the API models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from modelrollout.api.models import ModelRollout
from modelrollout.kube.workloads import role_service_name
from tests.unit.chart.helm import REPO
from tests.unit.chart.rendering import CHART, FULLNAME, Render, only

EXAMPLES = REPO / "examples" / "gitops"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _flux_kustomizations() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _docs(EXAMPLES / "flux" / "kustomizations.yaml")}


def _app_objects() -> list[dict[str, Any]]:
    """What kustomize would build from apps/ (resources lists followed, namespace applied)."""

    def build(directory: Path, namespace: str | None) -> list[dict[str, Any]]:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        namespace = kustomization.get("namespace", namespace)
        out = []
        for resource in kustomization["resources"]:
            path = directory / resource
            assert path.exists(), f"{directory}/kustomization.yaml lists missing {resource}"
            if path.is_dir():
                out += build(path, namespace)
                continue
            for doc in _docs(path):
                if namespace and doc["kind"] != "Namespace":
                    doc["metadata"]["namespace"] = namespace
                out.append(doc)
        return out

    return build(EXAMPLES / "apps", None)


def test_flux_kustomization_paths_exist_and_depend_in_order() -> None:
    kustomizations = _flux_kustomizations()
    assert set(kustomizations) == {"modelrollout-operator", "ml-models"}
    for k in kustomizations.values():
        assert k["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert (REPO / k["spec"]["path"]).is_dir(), k["spec"]["path"]
    assert kustomizations["ml-models"]["spec"]["dependsOn"] == [{"name": "modelrollout-operator"}]
    assert kustomizations["modelrollout-operator"]["spec"]["wait"] is True


def test_health_checks_name_a_rollout_that_the_apps_define() -> None:
    rollouts = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in _app_objects()
        if o["kind"] == "ModelRollout"
    }
    checks = _flux_kustomizations()["ml-models"]["spec"]["healthChecks"]
    assert checks and {(c["namespace"], c["name"]) for c in checks} <= rollouts
    assert all(c["apiVersion"] == "modelrollout.dev/v1alpha1" for c in checks)


def test_example_rollout_is_valid_and_its_route_matches() -> None:
    objects = _app_objects()
    rollout = only(objects, "ModelRollout")
    model = ModelRollout.model_validate(rollout)
    gateway = model.spec.traffic_routing.gateway_api
    assert gateway is not None
    route = only(objects, "HTTPRoute", gateway.http_route)
    assert route["metadata"]["namespace"] == rollout["metadata"]["namespace"]
    assert route["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/ssa"] == "IfNotPresent"
    backends = route["spec"]["rules"][gateway.rule_index]["backendRefs"]
    # the role Service of the stable version: right before, between and after rollouts
    assert backends[0]["name"] == role_service_name(rollout["metadata"]["name"], "stable")
    assert backends[0]["port"] == model.spec.service.port


def test_helm_release_installs_this_chart_with_values_it_accepts(render: Render) -> None:
    docs = _docs(EXAMPLES / "flux" / "operator" / "operator.yaml")
    release = only(docs, "HelmRelease")
    repository = only(docs, "HelmRepository")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    spec = release["spec"]["chart"]["spec"]
    assert spec["chart"] == chart["name"]
    assert spec["sourceRef"] == {"kind": "HelmRepository", "name": repository["metadata"]["name"]}
    assert Version(chart["version"]) in SpecifierSet(",".join(spec["version"].split()))
    assert (
        release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    )

    rendered = render(release["spec"]["values"])  # fails on any schema violation
    args = only(rendered, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    watched = release["spec"]["values"]["watchNamespaces"]
    assert args[: 2 * len(watched)] == [t for ns in watched for t in ("--namespace", ns)]
    rollout_namespaces = {
        o["metadata"]["namespace"] for o in _app_objects() if o["kind"] == "ModelRollout"
    }
    assert rollout_namespaces <= set(watched), (
        "the example operator would not see the example rollout"
    )
