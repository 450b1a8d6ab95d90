"""The model server's Prometheus metrics. Their names and labels are a contract: the operator's
query templates use them.

    model_requests_total{code, namespace, pod, service, version, model}        counter
    model_request_duration_seconds_bucket{le, namespace, pod, service, ...}    histogram
    model_prediction_score_bucket{le, namespace, pod, service, ...}            histogram
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

from e2e.modelserver.config import Identity

# 1 ms steps where the base latency lives (a +30% shift of a ~6 ms median moves p50..p99 by
# several buckets), coarser towards 2 s.
_LATENCY_MS = [*range(1, 21), 22, 24, 26, 28, 30, 33, 36, 40, 45, 50, 55, 60, 70, 80, 90]
_LATENCY_MS += [100, 120, 140, 160, 180, 200, 250, 300, 350, 400, 500, 600, 700, 800, 1000]
_LATENCY_MS += [1250, 1500, 1750, 2000]
LATENCY_BUCKETS: tuple[float, ...] = tuple(ms / 1000.0 for ms in _LATENCY_MS)
SCORE_BUCKETS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
# The *_created series would only double the scrape size.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONST_LABELS = ("namespace", "pod", "service", "version", "model")


class ServerMetrics:
    def __init__(self, identity: Identity) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = identity.labels()
        self._requests = Counter(
            "model_requests",
            "Prediction requests answered, by HTTP status code.",
            ["code", *CONST_LABELS],
            registry=self.registry,
        )
        self._labels = labels
        # Pre-create the usual codes so a rate over them is 0 rather than absent.
        for code in ("200", "500"):
            self._requests.labels(code=code, **labels)
        self.duration = Histogram(
            "model_request_duration_seconds",
            "Time to answer a prediction request (including injected latency).",
            CONST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.score = Histogram(
            "model_prediction_score",
            "Predicted probability of the positive class.",
            CONST_LABELS,
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        ).labels(**labels)

    def count(self, code: int) -> None:
        self._requests.labels(code=str(code), **self._labels).inc()
