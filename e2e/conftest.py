"""Fixtures of the end-to-end tests: the ModelRollout CRD, an operator per test, the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, install_crd, release_rollouts
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import Gateway


@pytest.fixture(scope="session")
def crd(lab: Lab) -> Lab:
    """The lab with the ModelRollout CRD installed (the no-CEL variant: the lab is 1.20)."""
    install_crd(lab)
    return lab


@pytest.fixture
def rollouts(crd: Lab, kube_api: k8s.ApiClient, namespace: str) -> Iterator[Rollouts]:
    yield Rollouts(kube_api, namespace)
    # The operator may be gone by now (tests kill it); without it nobody would remove the
    # finalizer and the namespace would stay Terminating on the shared lab forever.
    release_rollouts(kube_api, namespace)


@pytest.fixture
def operator(crd: Lab, namespace: str) -> Iterator[OperatorProcess]:
    """The operator, as a real process, watching only this test's namespace."""
    op = OperatorProcess(crd, [namespace]).start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def gateway(lab: Lab) -> Gateway:
    url = lab.gateway_url
    assert url, "the lab gateway is not running (python -m e2e.lab status)"
    return Gateway(url)
