"""docs/security.md: each query's timeout "is also passed to Prometheus as `timeout`", and
"no cloud-metadata header (`Metadata-Flavor`, IMDSv2 token) is sent with the GETs". One real
HTTP server on loopback records what the provider actually sends."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from modelrollout.metrics.prometheus import PrometheusProvider

ANSWER = {"status": "success", "data": {"resultType": "vector", "result": []}}
METADATA_HEADERS = {"metadata-flavor", "x-aws-ec2-metadata-token", "metadata"}


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[dict[str, list[str]], dict[str, str]]] = []

    def _answer(self) -> None:
        params = parse_qs(urlsplit(self.path).query)
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            params.update(parse_qs(self.rfile.read(length).decode()))
        self.seen.append((params, {k.lower(): v for k, v in self.headers.items()}))
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_query_timeout_reaches_prometheus_and_no_metadata_header_is_sent(server: str) -> None:
    async def one_query() -> None:
        provider = PrometheusProvider(server, timeout=2.0, bearer_token="t0ken")
        try:
            await provider.query('sum(rate(model_requests_total{service="a"}[1m]))')
        finally:
            await provider.aclose()

    asyncio.run(one_query())

    [(params, headers)] = Recorder.seen
    assert params["query"] == ['sum(rate(model_requests_total{service="a"}[1m]))']
    assert params["timeout"] == ["2s"]
    assert headers["authorization"] == "Bearer t0ken"
    assert not METADATA_HEADERS & set(headers), headers
