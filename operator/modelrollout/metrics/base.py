"""The metric-provider interface and its typed outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


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
