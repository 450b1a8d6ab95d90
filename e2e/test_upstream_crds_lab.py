"""The routing scenarios of issue 21 against the upstream definitions, unmodified: Gateway API
v1.6.1's HTTPRoute CRD (standard channel) and Istio 1.30.3's VirtualService CRD, in place of the
lab's own copies (written from the specs) for the length of this module.

They come from ``../shared/upstream-crds/`` beside the checkout (they may not be committed);
where that folder is absent the module says so and is skipped. Applied as its README says for a
1.20 apiserver: ``kubectl replace --validate=false`` (kubectl's client-side check rejects
``x-kubernetes-validations``, which the 1.20 apiserver drops). Disruptive: every other test on
the lab would see the upstream schemas meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import Gateway
from e2e.scenarios.test_routing_identity import reapplied_route_scenario, role_services_scenario

pytestmark = [pytest.mark.lab, pytest.mark.disruptive]

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "upstream-crds"
FILES = {
    "httproutes.gateway.networking.k8s.io": "gateway-api-1.6.1-standard-httproutes.yaml",
    "virtualservices.networking.istio.io": "istio-1.30.3-virtualservices.yaml",
}


@pytest.fixture(scope="module")
def upstream_crds(crd: Lab) -> Iterator[Lab]:
    missing = [f for f in FILES.values() if not (UPSTREAM / f).is_file()]
    if missing:
        pytest.skip(f"upstream CRDs not found beside the checkout ({UPSTREAM}): {missing}")
    lab = crd
    try:
        for name, file in FILES.items():
            lab.kubectl("replace", "--validate=false", "-f", str(UPSTREAM / file))
            lab.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        yield lab
    finally:
        # Back to the lab's copies where the apiserver allows it: once the upstream Istio CRD
        # stored objects as v1, a definition without v1 is refused (status.storedVersions);
        # the upstream one stays then, serving v1beta1 as the lab's copy does.
        for file in sorted(lab.paths.crds.glob("*.yaml")):
            lab.kubectl("replace", "--validate=false", "-f", str(file), check=False)


MARKS = {  # what only the upstream definitions carry (the lab's copies have neither)
    "httproutes.gateway.networking.k8s.io": "gateway.networking.k8s.io/bundle-version: v1.6.1",
    "virtualservices.networking.istio.io": "release: istio",
}


def test_the_upstream_crds_are_in_place(upstream_crds: Lab) -> None:
    for name, mark in MARKS.items():
        assert mark in upstream_crds.kubectl("get", f"crd/{name}", "-o", "yaml").stdout


def test_a_reapplied_route_is_put_back_on_the_upstream_httproute(
    upstream_crds: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    reapplied_route_scenario(rollouts, kube_api, namespace, gateway)


def test_role_services_on_the_upstream_virtualservice(
    upstream_crds: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    role_services_scenario(rollouts, kube_api, namespace, gateway)
