"""Fixtures of the fault suite: the operator as the chart's ServiceAccount, a fake HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    ChartIdentity,
    FakeServer,
    install_chart_rbac,
    install_peering_crds,
    remove_chart_rbac,
)
from e2e.harness import GROUP, PLURAL, VERSION
from e2e.lab.controlplane import Lab


@pytest.fixture
def chart_identity(crd: Lab, namespace: str) -> Iterator[ChartIdentity]:
    """The Helm chart's ServiceAccount and RBAC for this test's namespace (listed-namespace
    mode, Secrets readable), with a kubeconfig acting as it: the operator runs with exactly
    the rights the chart grants."""
    identity = install_chart_rbac(crd, namespace)
    yield identity
    remove_chart_rbac(crd, identity)


@pytest.fixture(scope="session")
def peering_crds(crd: Lab) -> Lab:
    """kopf's KopfPeering/ClusterKopfPeering CRDs, from the chart (left installed)."""
    install_peering_crds(crd)
    return crd


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def release_finalizers(crd: Lab, namespace: str) -> Iterator[None]:
    """After the test (its operators are stopped by then), drop kopf's finalizer from the
    namespace's ModelRollouts, so deleting the namespace does not wait for an operator forever."""
    yield
    with crd.api_client() as api:
        custom = k8s.CustomObjectsApi(api)
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        for item in items:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
