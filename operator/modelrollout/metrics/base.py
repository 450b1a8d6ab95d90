"""The metric-provider interface and its typed outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Value:
    value: float


@dataclass(frozen=True)
class Samples:
    values: list[float]


@dataclass(frozen=True)
class NoData:
    """Empty result or NaN: inconclusive, never a pass."""

    reason: str


@dataclass(frozen=True)
class ProviderError:
    """Unreachable, timed out, bad query, HTTP error."""

    reason: str


InstantOutcome = Value | NoData | ProviderError
RangeOutcome = Samples | NoData | ProviderError


class MetricProvider(Protocol):
    async def query(self, promql: str, at: datetime | None = None) -> InstantOutcome: ...

    async def query_range(
        self, promql: str, start: datetime, end: datetime, step_seconds: float
    ) -> RangeOutcome: ...

    async def is_online(self) -> bool: ...


@dataclass(frozen=True)
class Series:
    """One series of an instant vector: its labels and its value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Vector:
    """An instant vector with at least one series (an empty one is :class:`NoData`)."""

    series: tuple[Series, ...]


VectorOutcome = Vector | NoData | ProviderError


@runtime_checkable
class VectorProvider(MetricProvider, Protocol):
    """A provider that can also return a whole instant vector (several series).

    Needed by distribution checks (``prediction-psi`` reads one series per histogram bucket).
    Kept apart from :class:`MetricProvider` so simple fakes need only the three methods above.
    """

    async def query_vector(self, promql: str, at: datetime | None = None) -> VectorOutcome: ...
