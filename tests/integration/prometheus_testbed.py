"""A real Prometheus for the provider tests, scraping a simulated fleet of model servers.

* :class:`Fleet` is a prometheus_client collector: every scrape advances simulated traffic for
  each active Service (requests with a chosen 5xx share, lognormal latencies, prediction scores
  from a chosen Beta distribution) and exports the model-server contract:
  ``model_requests_total{code}``, ``model_request_duration_seconds`` and
  ``model_prediction_score`` histograms, labelled namespace/pod/service/version/model.
* :class:`PrometheusProcess` runs the Debian ``prometheus`` binary (installed with apt-get when
  missing) on a free 127.0.0.1 port with a temporary config and data dir, scrape interval 1s.
* :class:`FakeHTTP` answers every request with a canned response, optionally late: a slow or
  broken "Prometheus".
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import requests
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

NAMESPACE = "it"
LABELS = ["namespace", "pod", "service", "version", "model"]
LATENCY_BUCKETS = [round(0.05 + 0.01 * i, 2) for i in range(21)] + [0.3, 0.5, 1.0]
SCORE_BUCKETS = [round(0.1 * i, 1) for i in range(1, 11)]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Profile:
    """How one Service behaves: requests per second, 5xx share, latency, prediction scores."""

    rps: float = 200.0
    error_share: float = 0.0
    latency_median: float = 0.100
    latency_sigma: float = 0.08
    score_beta: tuple[float, float] = (2.0, 5.0)


@dataclass
class _State:
    profile: Profile
    last: float
    carry: float = 0.0
    total: int = 0
    errors: int = 0
    requests: dict[str, float] = field(default_factory=lambda: {"200": 0.0})
    latency: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    scores: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BUCKETS) + 1))
    score_sum: float = 0.0


class Fleet(Collector):
    """Simulated model servers; traffic advances at each scrape, from the wall clock."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._services: dict[str, _State] = {}
        self.probes: dict[str, float] = {}  # probe_label{value=...}: arbitrary label values

    def activate(self, service: str, profile: Profile) -> None:
        with self._lock:
            self._services[service] = _State(profile, last=time.monotonic())

    def _advance(self, state: _State, now: float) -> None:
        profile = state.profile
        exact = profile.rps * (now - state.last) + state.carry
        n = int(exact)
        state.carry, state.last = exact - n, now
        # an exact running share of 5xx, so the error rate is what the test chose
        state.total += n
        state.errors = round(state.total * profile.error_share)
        state.requests = {"200": float(state.total - state.errors)}
        if profile.error_share:
            state.requests["500"] = float(state.errors)
        latencies = self._rng.lognormal(np.log(profile.latency_median), profile.latency_sigma, n)
        state.latency += np.bincount(
            np.searchsorted(LATENCY_BUCKETS, latencies, side="left"),
            minlength=len(LATENCY_BUCKETS) + 1,
        )
        state.latency_sum += float(latencies.sum())
        scores = self._rng.beta(*profile.score_beta, n)
        state.scores += np.bincount(
            np.searchsorted(SCORE_BUCKETS, scores, side="left"), minlength=len(SCORE_BUCKETS) + 1
        )
        state.score_sum += float(scores.sum())

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        now = time.monotonic()
        requests_total = CounterMetricFamily(
            "model_requests", "Requests served.", labels=[*LABELS, "code"]
        )
        latency = HistogramMetricFamily(
            "model_request_duration_seconds", "Request latency.", labels=LABELS
        )
        score = HistogramMetricFamily(
            "model_prediction_score", "Positive-class probability.", labels=LABELS
        )
        with self._lock:
            for service, state in self._services.items():
                self._advance(state, now)
                labels = [NAMESPACE, f"{service}-0", service, "1.0.0", "fraud"]
                for code, count in sorted(state.requests.items()):
                    requests_total.add_metric([*labels, code], count)
                latency.add_metric(
                    labels, _buckets(LATENCY_BUCKETS, state.latency), state.latency_sum
                )
                score.add_metric(labels, _buckets(SCORE_BUCKETS, state.scores), state.score_sum)
            probes = dict(self.probes)
        yield requests_total
        yield latency
        yield score
        probe = GaugeMetricFamily("probe_label", "Label-escaping probe.", labels=["value"])
        for value, number in probes.items():
            probe.add_metric([value], number)
        yield probe


def _buckets(bounds: list[float], counts: np.ndarray) -> list[tuple[str, float]]:
    cumulative = np.cumsum(counts)
    pairs = [(repr(float(b)), float(c)) for b, c in zip(bounds, cumulative[:-1], strict=True)]
    return [*pairs, ("+Inf", float(cumulative[-1]))]


@contextmanager
def serve_fleet(fleet: Fleet) -> Iterator[int]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(fleet)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not yet
            last = exc
        time.sleep(interval)  # the poll period, not a stand-in for the condition
    raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last})")


async def eventually(
    produce: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.5,
    each: Callable[[T], None] | None = None,
) -> T:
    """Call ``produce`` until ``done(result)``; ``each`` can assert on every intermediate result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await produce()
        if each is not None:
            each(result)
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s; last result: {result}")
        await asyncio.sleep(interval)


def ensure_prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
        check=True,
        capture_output=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=600,
    )
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("apt-get installed prometheus but no prometheus binary is on PATH")
    return found


class PrometheusProcess:
    """Our own Prometheus (never the system service) on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: sim\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self._log = (workdir / "prometheus.log").open("w")
        self._process = subprocess.Popen(
            [
                ensure_prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self) -> str:
        return (self._workdir / "prometheus.log").read_text()[-2000:]

    def _ready(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}"
            )
        return requests.get(f"{self.address}/-/ready", timeout=1).status_code == 200

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            wait_for(self._ready, timeout, "prometheus /-/ready")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc

    def value(self, query: str) -> float | None:
        """The value of a one-series instant query, None when empty."""
        response = requests.get(f"{self.address}/api/v1/query", params={"query": query}, timeout=2)
        result = response.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def has_series(self, selector: str, min_samples: int = 1) -> bool:
        """True once every series of the selector has ``min_samples`` samples in the last minute."""
        count = self.value(f"min(count_over_time({selector}[1m]))")
        return count is not None and count >= min_samples

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._log.close()


@dataclass
class CannedResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0


class FakeHTTP:
    """An HTTP server that answers every GET with ``response`` (after ``delay`` seconds)."""

    def __init__(self, response: CannedResponse) -> None:
        self.response = response
        self._release = threading.Event()  # set at close so a delayed handler ends at once
        canned, release = self.response, self._release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                release.wait(canned.delay)
                self.send_response(canned.status)
                self.send_header("Content-Type", canned.content_type)
                self.send_header("Content-Length", str(len(canned.body)))
                self.end_headers()
                self.wfile.write(canned.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
