"""The model server: a stdlib ThreadingHTTPServer in front of a scikit-learn model.

POST /predict   {"instances": [[30 numbers], ...]} -> {"predictions": [{"score", "label"}], ...}
                an empty body (or {}) predicts one random row of the training data
GET  /healthz   200 "ok"
GET  /metrics   Prometheus text format
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from e2e.modelserver.config import ServerConfig
from e2e.modelserver.metrics import ServerMetrics
from e2e.modelserver.model import BadInstances, Model, validate_instances

MAX_BODY = 4 * 1024 * 1024


class RateWindow:
    """Requests per second over the last ``window`` seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self._window = window
        self._stamps: deque[float] = deque()
        self._lock = threading.Lock()

    def hit(self, now: float) -> float:
        with self._lock:
            self._stamps.append(now)
            cutoff = now - self._window
            while self._stamps and self._stamps[0] < cutoff:
                self._stamps.popleft()
            return len(self._stamps) / self._window


class App:
    def __init__(self, config: ServerConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.model = Model(shuffled_labels=config.faults.shuffled_labels)
        self.metrics = ServerMetrics(config.identity)
        self.rates = RateWindow()
        self._rnd = random.Random(seed)
        self._rnd_lock = threading.Lock()

    def latency_s(self) -> float:
        """Base latency (lognormal jitter around the median) x factor, plus the fixed extra."""
        cfg = self.config
        with self._rnd_lock:
            z = self._rnd.gauss(0.0, 1.0)
        base = cfg.base_latency_ms * math.exp(cfg.base_latency_sigma * z)
        return (base * cfg.faults.latency_factor + cfg.faults.latency_ms) / 1000.0

    def should_fail(self, rps: float) -> bool:
        faults = self.config.faults
        if faults.error_rate_above_rps is not None and rps <= faults.error_rate_above_rps:
            return False
        with self._rnd_lock:
            return self._rnd.random() < faults.error_rate

    def random_rows(self, n: int) -> list[list[float]]:
        with self._rnd_lock:
            return self.model.random_rows(n, self._rnd)

    def predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one /predict call: (status code, JSON body). Observes the metrics."""
        started = time.perf_counter()
        rps = self.rates.hit(time.monotonic())
        time.sleep(self.latency_s())
        code, payload = self._answer(body, rps)
        self.metrics.duration.observe(time.perf_counter() - started)
        self.metrics.count(code)
        return code, payload

    def _answer(self, body: bytes, rps: float) -> tuple[int, dict[str, Any]]:
        ident = self.config.identity
        meta = {"model": ident.model, "version": ident.version, "pod": ident.pod}
        try:
            matrix = validate_instances(self._instances(body))
        except BadInstances as exc:
            return 400, {"error": str(exc), **meta}
        if self.should_fail(rps):
            return 500, {"error": "injected fault (FAULT_ERROR_RATE)", **meta}
        predictions = self.model.predict(matrix)
        for p in predictions:
            self.metrics.score.observe(p.score)
        return 200, {
            "predictions": [{"score": p.score, "label": p.label} for p in predictions],
            **meta,
        }

    def _instances(self, body: bytes) -> object:
        if not body.strip():
            return self.random_rows(1)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInstances(f"the body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadInstances('the body must be a JSON object {"instances": [...]}')
        if "instances" not in doc:
            return self.random_rows(1)
        return doc["instances"]


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "modelserver/1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would cost more than the prediction

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: dict[str, Any]) -> None:
            self._send(code, json.dumps(doc).encode(), "application/json")

        def _read_body(self) -> bytes | None:
            raw = self.headers.get("Content-Length", "0")
            length = int(raw) if raw.isdigit() else -1
            if not 0 <= length <= MAX_BODY:
                self._json(413, {"error": f"Content-Length must be 0..{MAX_BODY}, got {raw!r}"})
                return None
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/metrics":
                self._send(200, generate_latest(app.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": f"no such path: GET {path}"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            body = self._read_body()
            if body is None:
                return
            if path != "/predict":
                self._json(404, {"error": f"no such path: POST {path}"})
                return
            code, doc = app.predict(body)
            self._json(code, doc)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # a client that went away (scraper restarts, cancelled proxy calls)
        super().handle_error(request, client_address)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started us (the node simulator) is gone."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _crash_after(seconds: float) -> None:
    time.sleep(seconds)
    print(f"modelserver: FAULT_CRASH_AFTER_S={seconds:g} reached, exiting", file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def serve(config: ServerConfig) -> None:
    app = App(config)
    httpd = _Server(("127.0.0.1", config.port), make_handler(app))
    if config.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(config.parent_pid,), daemon=True).start()
    if config.faults.crash_after_s is not None:
        threading.Thread(
            target=_crash_after, args=(config.faults.crash_after_s,), daemon=True
        ).start()
    ident = config.identity
    print(
        f"modelserver: {ident.model or '-'} version {ident.version or '-'} "
        f"(pod {ident.namespace}/{ident.pod}) on 127.0.0.1:{httpd.server_address[1]}",
        file=sys.stderr,
        flush=True,
    )
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        httpd.server_close()
