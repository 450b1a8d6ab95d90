"""pytest fixtures of the lab (loaded by the root conftest.py).

- ``lab`` (session): the :class:`~e2e.lab.Lab`, brought up or reused. It stays up
  after the session so the next run reuses it; ``python -m e2e.lab down`` stops it.
  If it cannot start, the fixture errors with the failing log's tail (never skips).
- ``kube_api`` (session): a kubernetes ``ApiClient`` from ``.lab/kubeconfig`` (admin).
- ``namespace`` (function): a fresh namespace, ready for pods, deleted afterwards.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.lab.controlplane import Lab


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The running lab (started when needed; left running after the session)."""
    return Lab().up()


@pytest.fixture(scope="session")
def kube_api(lab: Lab) -> Iterator[Any]:
    """Admin ``kubernetes.client.ApiClient`` configured from ``.lab/kubeconfig``."""
    with lab.api_client() as client:
        yield client


@pytest.fixture
def namespace(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; its default ServiceAccount is ready."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    lab.create_namespace(name, labels={"modelrollout.dev/test": "true"})
    yield name
    lab.delete_namespace(name)
