"""Fixtures of the router tests: recorded route bodies (see fixtures/)."""

from __future__ import annotations

import pytest

from tests.unit.routing.routing_fakes import Body, load_fixture


@pytest.fixture
def httproute() -> Body:
    return load_fixture("httproute.yaml")


@pytest.fixture
def virtualservice() -> Body:
    return load_fixture("virtualservice.yaml")
