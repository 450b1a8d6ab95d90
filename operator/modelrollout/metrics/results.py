"""Prometheus' query results (``data.result`` of its JSON) as typed outcomes.

Pure functions of the decoded JSON, shared by every way of asking Prometheus: a number is
:class:`Value`, an empty result, NaN or ±Inf is :class:`NoData`, a result of the wrong shape
(several series where one is expected) is :class:`ProviderError`, and a body that is not
Prometheus' JSON at all raises ``ValueError``. Texts quoted from the result are short.
"""

from __future__ import annotations

import math
from typing import Any

from modelrollout.metrics.base import (
    InstantOutcome,
    NoData,
    ProviderError,
    RangeOutcome,
    Samples,
    Series,
    Value,
    Vector,
    VectorOutcome,
)
from modelrollout.outbound import clip


class _Malformed(ValueError):
    pass


def _number(sample: Any) -> float:
    """The value of a ``[timestamp, "value"]`` pair."""
    if not isinstance(sample, list | tuple) or len(sample) != 2 or not isinstance(sample[1], str):
        raise _Malformed(f"not a [timestamp, value] pair: {sample!r:.80}")
    try:
        return float(sample[1])
    except ValueError as exc:
        raise _Malformed(f"not a number: {sample[1]!r:.80}") from exc


def _non_finite(value: float) -> NoData:
    if math.isnan(value):
        return NoData("value is NaN (e.g. 0/0: no requests in the interval)")
    return NoData(
        f"value is {'+' if value > 0 else '-'}Inf "
        "(e.g. a quantile beyond the largest histogram bucket, or a division by zero)"
    )


def _is_scalar(result: list[Any]) -> bool:
    return len(result) == 2 and not isinstance(result[0], dict)


def _series_items(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
        raise _Malformed(f"unexpected result: {result!r:.120}")
    return result


def _too_many(result: list[dict[str, Any]]) -> ProviderError:
    labels = [item.get("metric", {}) for item in result[:2]]
    return ProviderError(
        clip(
            f"query returned {len(result)} series, expected 1; aggregate it (e.g. sum(...)). "
            f"First series: {', '.join(str(lab) for lab in labels)}"
        )
    )


def parse_instant(result: Any) -> InstantOutcome:
    """The ``data.result`` of an instant query, as one number."""
    if isinstance(result, list) and _is_scalar(result):
        value = _number(result)
    else:
        items = _series_items(result)
        if not items:
            return NoData("query returned no series")
        if len(items) > 1:
            return _too_many(items)
        if "value" not in items[0]:
            if "values" in items[0]:
                return ProviderError("query returned a range vector; expected one instant value")
            raise _Malformed(f"series without a value: {items[0]!r:.120}")
        value = _number(items[0]["value"])
    return Value(value) if math.isfinite(value) else _non_finite(value)


def parse_range(result: Any) -> RangeOutcome:
    """The ``data.result`` of a range query, as the finite samples of its one series."""
    items = _series_items(result)
    if not items:
        return NoData("query returned no series in the window")
    if len(items) > 1:
        return _too_many(items)
    raw = items[0].get("values")
    if not isinstance(raw, list):
        raise _Malformed(f"series without values: {items[0]!r:.120}")
    values = [_number(sample) for sample in raw]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return NoData(f"all {len(values)} samples are NaN or infinite")
    return Samples(finite)


def parse_vector(result: Any) -> VectorOutcome:
    """The ``data.result`` of an instant query, as every series with its labels."""
    if isinstance(result, list) and _is_scalar(result):
        return ProviderError("query returned a scalar; expected a vector of series")
    items = _series_items(result)
    if not items:
        return NoData("query returned no series")
    series = []
    for item in items:
        labels = item.get("metric")
        if not isinstance(labels, dict) or "value" not in item:
            raise _Malformed(f"unexpected series: {item!r:.120}")
        series.append(Series({str(k): str(v) for k, v in labels.items()}, _number(item["value"])))
    return Vector(tuple(series))
