"""One process exposing synthetic model-server metrics for every Service of a benchmark.

    python -m bench.exporter --port PORT

At 1,000 rollouts a real model-server process per pod is out of the question, so the pods run
without one (``lab.modelrollout.dev/no-process``) and this exporter stands in for all of them:

``GET /metrics``
    ``model_requests_total{namespace, service, code}`` for every registered Service: a counter
    that grows by ``rps`` per second, of which the share ``errorRate`` has ``code="500"`` and
    the rest ``code="200"``. Counts are computed at scrape time from the elapsed time, so
    thousands of Services cost nothing between scrapes.
``PUT /services``
    JSON ``{"services": [{"namespace", "service", "rps", "errorRate"}]}``: register Services or
    change their rate; counts so far are kept and the new rate applies from now on. Answers
    ``{"services": <how many are registered>}``.
``GET /healthz``

Register it with Prometheus through a file_sd target (``honor_labels`` keeps ``namespace``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ServiceRate(BaseModel):
    """What one Service serves from now on."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    namespace: str = Field(min_length=1)
    service: str = Field(min_length=1)
    rps: float = Field(default=5.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1, alias="errorRate")


class ServicesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    services: list[ServiceRate]


@dataclass
class _Counter:
    rps: float
    error_rate: float
    ok: float = 0.0
    errors: float = 0.0
    since: float = 0.0

    def at(self, now: float) -> tuple[float, float]:
        elapsed = max(0.0, now - self.since)
        served = self.rps * elapsed
        return self.ok + served * (1 - self.error_rate), self.errors + served * self.error_rate


class SyntheticRequests(Collector):
    """``model_requests_total`` of many Services, computed from their rates at scrape time."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], _Counter] = {}

    def set(self, rates: Iterable[ServiceRate]) -> int:
        now = self._clock()
        with self._lock:
            for rate in rates:
                key = (rate.namespace, rate.service)
                current = self._counters.get(key)
                if current is None:
                    self._counters[key] = _Counter(rate.rps, rate.error_rate, since=now)
                    continue
                current.ok, current.errors = current.at(now)
                current.rps, current.error_rate, current.since = rate.rps, rate.error_rate, now
            return len(self._counters)

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        family = CounterMetricFamily(
            "model_requests",
            "Requests answered, by status code (synthetic: bench.exporter).",
            labels=["namespace", "service", "code"],
        )
        with self._lock:
            snapshot = [(key, counter.at(now)) for key, counter in self._counters.items()]
        for (namespace, service), (ok, errors) in snapshot:
            family.add_metric([namespace, service, "200"], ok)
            family.add_metric([namespace, service, "500"], errors)
        yield family


def make_server(
    port: int, host: str = "127.0.0.1"
) -> tuple[ThreadingHTTPServer, SyntheticRequests]:
    requests = SyntheticRequests()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(requests)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """One line per scrape is noise."""

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._reply(200, b"ok\n", "text/plain")
            else:
                self._reply(404, b'{"error": "try /metrics, /healthz or PUT /services"}')

        def do_PUT(self) -> None:
            if self.path != "/services":
                self._reply(404, b'{"error": "only PUT /services"}')
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                request = ServicesRequest.model_validate_json(raw)
            except ValidationError as exc:
                self._reply(422, json.dumps({"error": str(exc)}).encode())
                return
            count = requests.set(request.services)
            self._reply(200, json.dumps({"services": count}).encode())

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server, requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exporter", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server, _ = make_server(args.port, args.host)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
