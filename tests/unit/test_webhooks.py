"""Webhooks: gate answers, Slack messages, CloudEvents, retries, timeouts and TLS.

Request logic runs against httpx.MockTransport; timeouts, hangs, trickles, a 400 MB answer, a
blackhole, 500s and certificate verification against real servers on 127.0.0.1 (aiohttp, with
a trustme self-signed CA; tests/loopback.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
import trustme
from aiohttp import web

from modelrollout import audit, webhooks
from modelrollout.api.models import HistoryEntry, MetricResult, ModelRef, Verdict, WebhookSpec
from modelrollout.engine.types import GateResult
from modelrollout.observability import METRICS, configure_logging
from modelrollout.webhooks import RetryPolicy, WebhookHTTP
from tests import loopback
from tests.loopback import LocalServer, serve

FAST = RetryPolicy(attempts=3, initial=0.0, maximum=0.0)
MODEL = ModelRef(name="fraud", version="2.4.0", uri="s3://models/fraud/2.4.0")
HEADERS = {"X-Api-Key": "header-secret-value"}
SECRET_URL = "https://hooks.example.com/services/T000/B000/PATHSECRET?token=QUERYSECRET"


def spec(kind: str = "pre-rollout", timeout: str = "2s", insecure: bool = False) -> WebhookSpec:
    return WebhookSpec(name="hook", type=kind, timeout=timeout, insecure_skip_verify=insecure)  # type: ignore[arg-type]


def payload() -> dict[str, Any]:
    return webhooks.gate_payload(
        namespace="ml",
        rollout="fraud",
        webhook_type="pre-rollout",
        model=MODEL,
        stage="shadow",
        metrics=[
            MetricResult(
                name="error-rate", verdict=Verdict.SUCCESSFUL, value=0.001, bound="<= 0.01"
            )
        ],
    )


@dataclass
class Recorder:
    """A MockTransport handler that answers from a script and records requests."""

    answers: list[int | Exception]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"ok": answer < 300})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def webhook_count(kind: str, outcome: str) -> float:
    return (
        METRICS.registry.get_sample_value(
            "modelrollout_webhook_requests_total", {"type": kind, "outcome": outcome}
        )
        or 0.0
    )


# ----------------------------------------------------------------------------- gates (logic)


async def test_gate_open_on_2xx_posts_payload_and_headers() -> None:
    rec = Recorder([204])
    before = webhook_count("pre-rollout", "open")
    result = await webhooks.call_gate(
        spec(), "https://gate.example/check", HEADERS, payload(), transport=rec.transport
    )
    assert result is GateResult.OPEN
    (request,) = rec.requests
    assert request.method == "POST" and str(request.url) == "https://gate.example/check"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-api-key"] == "header-secret-value"
    assert request.headers["user-agent"].startswith("modelrollout-operator/")
    assert json.loads(request.content) == {
        "rollout": "fraud",
        "namespace": "ml",
        "type": "pre-rollout",
        "model": {"name": "fraud", "version": "2.4.0", "uri": "s3://models/fraud/2.4.0"},
        "stage": "shadow",
        "metrics": [
            {"name": "error-rate", "verdict": "Successful", "value": 0.001, "bound": "<= 0.01"}
        ],
    }
    assert webhook_count("pre-rollout", "open") == before + 1


@pytest.mark.parametrize("status", [301, 403, 409, 500, 503])
async def test_gate_closed_on_any_other_status_without_retry(status: int) -> None:
    rec = Recorder([status, 200])
    result = await webhooks.call_gate(
        spec("confirm-promotion"), "https://g/", {}, payload(), retry=FAST, transport=rec.transport
    )
    assert result is GateResult.CLOSED
    assert len(rec.requests) == 1  # an answer is an answer: the engine asks again later


async def test_gate_timeout_after_retries_of_connection_errors() -> None:
    rec = Recorder([httpx.ConnectError("[Errno 111] Connection refused")])
    before = webhook_count("pre-rollout", "timeout")
    result = await webhooks.call_gate(
        spec(), "https://g/", {}, payload(), retry=FAST, transport=rec.transport
    )
    assert result is GateResult.TIMEOUT
    assert len(rec.requests) == 3
    assert webhook_count("pre-rollout", "timeout") == before + 1


async def test_gate_recovers_within_its_retries() -> None:
    rec = Recorder([httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset"), 200])
    assert (
        await webhooks.call_gate(
            spec(), "https://g/", {}, payload(), retry=FAST, transport=rec.transport
        )
        is GateResult.OPEN
    )
    assert len(rec.requests) == 3


async def test_certificate_failure_is_not_retried() -> None:
    rec = Recorder(
        [httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")]
    )
    assert (
        await webhooks.call_gate(
            spec(), "https://g/", {}, payload(), retry=FAST, transport=rec.transport
        )
        is GateResult.TIMEOUT
    )
    assert len(rec.requests) == 1  # no retry fixes a certificate


async def test_gate_with_a_bad_url_is_a_timeout_at_once() -> None:
    result = await webhooks.call_gate(spec(), "ftp://gate.example/", {}, payload(), retry=FAST)
    assert result is GateResult.TIMEOUT


async def test_gate_refuses_a_notification_webhook() -> None:
    with pytest.raises(ValueError, match="webhook 'hook' is of type notify, not a gate"):
        await webhooks.call_gate(spec("notify"), "https://g/", {}, payload())


async def test_backoff_grows_between_attempts() -> None:
    stamps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stamps.append(time.monotonic())
        raise httpx.ConnectError("refused")

    policy = RetryPolicy(attempts=3, initial=0.05, maximum=1.0)
    await webhooks.call_gate(
        spec(), "https://g/", {}, payload(), retry=policy, transport=httpx.MockTransport(handler)
    )
    first_wait, second_wait = stamps[1] - stamps[0], stamps[2] - stamps[1]
    assert first_wait >= 0.05 and second_wait >= 0.1


def test_retry_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="need 0 <= initial <= maximum"):
        RetryPolicy(initial=5, maximum=1)


# ----------------------------------------------------------------------------- notifications


def test_slack_message_names_rollout_version_stage_and_reason() -> None:
    message = webhooks.notification_message(
        event="RolledBack",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="canary-5",
        reason="AnalysisFailed: error-rate 0.05 > 0.01",
    )
    assert message["text"] == (
        "ModelRollout ml/fraud: version 2.4.0 rolled back (AnalysisFailed: error-rate 0.05 > 0.01)"
    )
    assert (
        message["blocks"][0]["text"]["text"] == "*ModelRollout ml/fraud*: version 2.4.0 rolled back"
    )
    (attachment,) = message["attachments"]
    assert attachment["color"] == "#a30200"
    fields = [f["text"] for f in attachment["blocks"][0]["fields"]]
    assert fields == [
        "*Rollout*\nfraud",
        "*Namespace*\nml",
        "*Version*\n2.4.0",
        "*Stage*\ncanary-5",
    ]
    assert (
        attachment["blocks"][1]["text"]["text"]
        == "*Reason*\nAnalysisFailed: error-rate 0.05 &gt; 0.01"
    )


@pytest.mark.parametrize(
    ("event", "headline", "color"),
    [
        ("StageEntered", "version 2.4.0 entered stage canary-5", "#439fe0"),
        ("Promoted", "version 2.4.0 promoted", "#2eb886"),
        ("Failed", "version 2.4.0 failed", "#a30200"),
        ("Paused", "version 2.4.0: Paused", "#daa038"),
    ],
)
def test_slack_message_per_event(event: str, headline: str, color: str) -> None:
    message = webhooks.notification_message(
        event=event, namespace="ml", rollout="fraud", version="2.4.0", stage="canary-5"
    )
    assert message["text"] == f"ModelRollout ml/fraud: {headline}"
    assert message["attachments"][0]["color"] == color


async def test_notify_posts_the_message_and_retries_5xx_and_429() -> None:
    rec = Recorder([503, 429, 200])
    before = webhook_count("notify", "delivered")
    delivered = await webhooks.notify(
        spec("notify"),
        "https://hooks.example/x",
        HEADERS,
        event="Promoted",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="full",
        reason="all stages passed",
        retry=FAST,
        transport=rec.transport,
    )
    assert delivered is True
    assert len(rec.requests) == 3
    body = json.loads(rec.requests[-1].content)
    assert body["text"] == "ModelRollout ml/fraud: version 2.4.0 promoted (all stages passed)"
    assert webhook_count("notify", "delivered") == before + 1


async def test_notify_gives_up_without_raising() -> None:
    rec = Recorder([500])
    before = webhook_count("notify", "failed")
    assert not await webhooks.notify(
        spec("notify"),
        "https://h/",
        {},
        event="StageEntered",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="canary-5",
        retry=FAST,
        transport=rec.transport,
    )
    assert len(rec.requests) == 3
    rejected = Recorder([400])
    assert not await webhooks.notify(
        spec("notify"),
        "https://h/",
        {},
        event="StageEntered",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="canary-5",
        retry=FAST,
        transport=rejected.transport,
    )
    assert len(rejected.requests) == 1  # a 4xx will not get better by asking again
    broken = Recorder([RuntimeError("bug in a transport")])
    assert not await webhooks.notify(
        spec("notify"),
        "https://h/",
        {},
        event="StageEntered",
        namespace="ml",
        rollout="fraud",
        version=None,
        stage=None,
        retry=FAST,
        transport=broken.transport,
    )
    assert webhook_count("notify", "failed") == before + 3


# ----------------------------------------------------------------------------- audit


def _sealed_entry() -> HistoryEntry:
    history: list[HistoryEntry] = []
    return audit.append(
        history,
        HistoryEntry(
            time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            event="StageEntered",
            from_stage="shadow",
            to_stage="canary-5",
            reason="analysis passed",
            model=MODEL,
        ),
    )


async def test_audit_event_is_a_structured_cloudevent() -> None:
    entry = _sealed_entry()
    rec = Recorder([202])
    assert await webhooks.send_audit_event(
        spec("audit"),
        "https://audit.example/in",
        {},
        namespace="ml",
        rollout="fraud",
        entry=entry,
        retry=FAST,
        transport=rec.transport,
    )
    (request,) = rec.requests
    assert request.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    event = json.loads(request.content)
    assert event == {
        "specversion": "1.0",
        "type": "dev.modelrollout.audit.StageEntered",
        "source": "/apis/modelrollout.dev/v1alpha1/namespaces/ml/modelrollouts/fraud",
        "id": entry.hash,
        "time": "2024-05-01T12:00:00.000000Z",
        "datacontenttype": "application/json",
        "data": entry.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    # The receiver can check the entry it got against the chain.
    assert audit.verify([HistoryEntry.model_validate(event["data"])]) == []


def test_cloudevent_id_without_a_hash_is_stable() -> None:
    raw = {"time": "2024-05-01T12:00:00Z", "event": "Promoted", "seq": 4}
    first = webhooks.cloud_event(namespace="ml", rollout="fraud", entry=raw)
    assert (
        first["id"] == webhooks.cloud_event(namespace="ml", rollout="fraud", entry=dict(raw))["id"]
    )
    assert len(first["id"]) == 64 and first["data"] == raw


# ------------------------------------------------------------------ secrets stay out of logs


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    yield out
    structlog.reset_defaults()


async def test_logs_never_show_url_path_query_or_header_values(log_output: io.StringIO) -> None:
    failing = Recorder([httpx.ConnectError(f"cannot connect to {SECRET_URL}")])
    await webhooks.call_gate(
        spec(), SECRET_URL, HEADERS, payload(), retry=FAST, transport=failing.transport
    )
    await webhooks.notify(
        spec("notify"),
        SECRET_URL,
        HEADERS,
        event="Promoted",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="full",
        retry=FAST,
        transport=Recorder([500]).transport,
    )
    text = log_output.getvalue()
    assert "https://hooks.example.com" in text  # the host is fine and useful
    for secret in ("PATHSECRET", "QUERYSECRET", "T000", "header-secret-value"):
        assert secret not in text


def test_safe_url_keeps_scheme_host_and_port_only() -> None:
    assert webhooks.safe_url("https://user:pw@h.example:8443/a/b?c=d#e") == "https://h.example:8443"
    assert webhooks.safe_url(SECRET_URL) == "https://hooks.example.com"
    assert webhooks.safe_url("http://[::1") == "<invalid url>"


def test_parse_headers() -> None:
    assert webhooks.parse_headers(b'{"Authorization": "Bearer x", "X-Team": "ml"}') == {
        "Authorization": "Bearer x",
        "X-Team": "ml",
    }
    for text, message in [
        ("not json", "headers must be a JSON object such as"),
        ('["a"]', "headers must be a JSON object, got a JSON list"),
        ('{"X-Retries": 3}', "header 'X-Retries' must have a string value, not int"),
        ('{"Bad Name": "v"}', "header name 'Bad Name' is not a valid HTTP header name"),
        ('{"X-A": "sec\\r\\nret"}', "header 'X-A' has a line break in its value"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            webhooks.parse_headers(text)
        assert "sec" not in str(info.value)


# ------------------------------------------------------------------ real servers on 127.0.0.1


@pytest.fixture
def cert_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"ok": True})

    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def hang(_: web.Request) -> web.Response:
        await release.wait()  # never answers while the test runs
        return web.Response(status=200)

    runner, local = await serve(
        {"/ok": ok, "/fail": fail, "/hang": hang, "/trickle": loopback.trickle(release, 0.05)}
    )
    yield local
    release.set()
    await runner.cleanup()


async def test_real_server_open_and_500(server: LocalServer) -> None:
    assert (
        await webhooks.call_gate(spec(), f"{server.url}/ok", HEADERS, payload(), retry=FAST)
        is GateResult.OPEN
    )
    assert (
        await webhooks.call_gate(spec(), f"{server.url}/fail", {}, payload(), retry=FAST)
        is GateResult.CLOSED
    )
    assert not await webhooks.notify(
        spec("notify"),
        f"{server.url}/fail",
        {},
        event="Promoted",
        namespace="ml",
        rollout="fraud",
        version="2.4.0",
        stage="full",
        retry=FAST,
    )
    assert server.hits == {"/ok": 1, "/fail": 1 + 3}


@pytest.mark.parametrize("path", ["/hang", "/trickle"])
async def test_real_server_that_never_finishes_answering_times_out(
    server: LocalServer, path: str
) -> None:
    policy = RetryPolicy(attempts=2, initial=0.0, maximum=0.0)
    started = time.monotonic()
    result = await webhooks.call_gate(
        spec(timeout="300ms"), f"{server.url}{path}", {}, payload(), retry=policy
    )
    elapsed = time.monotonic() - started
    assert result is GateResult.TIMEOUT
    assert server.hits[path] == 2
    assert 0.6 <= elapsed < 3.0  # two bounded attempts, not the server's pace


async def test_connection_refused_is_a_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await webhooks.call_gate(
        spec(), f"http://127.0.0.1:{port}/", {}, payload(), retry=FAST
    )
    assert result is GateResult.TIMEOUT


async def test_tls_verification_is_on_by_default(
    cert_authority: trustme.CA, log_output: io.StringIO
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert_authority.issue_cert("127.0.0.1").configure_cert(server_context)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    runner, local = await serve({"/ok": ok}, ssl_context=server_context)
    try:
        url = f"{local.url}/ok"
        assert url.startswith("https://127.0.0.1:")
        result = await webhooks.call_gate(spec(), url, {}, payload(), retry=FAST)
        assert result is GateResult.TIMEOUT  # self-signed: refused by the client
        assert "TLS certificate verification failed" in log_output.getvalue()
        # Opting out is explicit, per webhook.
        assert (
            await webhooks.call_gate(spec(insecure=True), url, {}, payload(), retry=FAST)
            is GateResult.OPEN
        )
        assert local.hits == {"/ok": 1}
    finally:
        await runner.cleanup()


# ------------------------------------------------------------- bounded calls, shared fairly

ONCE = RetryPolicy(attempts=1, initial=0.0, maximum=0.0)


async def test_a_400_mb_answer_is_not_read_and_costs_no_memory() -> None:
    # Bodies were read whole: a 400 MB gate answer grew the process by 905 MiB.
    huge = loopback.endless(400 * 1024 * 1024)
    runner, local = await serve({"/gate": huge})
    try:
        tracemalloc.start()
        try:
            result = await webhooks.call_gate(
                spec(), f"{local.url}/gate", {}, payload(), retry=ONCE
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await runner.cleanup()
    assert result is GateResult.OPEN  # the status is the answer; the body is dropped
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    assert huge.sent < 40 * 1024 * 1024, f"{huge.sent / 2**20:.0f} MiB were sent"


async def test_a_blackholed_gate_ends_at_its_deadline() -> None:
    policy = RetryPolicy(attempts=2, initial=0.0, maximum=0.0)
    started = time.monotonic()
    with loopback.blackhole() as url:
        result = await webhooks.call_gate(spec(timeout="500ms"), url, {}, payload(), retry=policy)
    assert result is GateResult.TIMEOUT
    assert time.monotonic() - started < 5  # two attempts of 0.5 s, never the TCP timeouts


async def test_one_namespace_of_blackholed_gates_does_not_delay_another(
    server: LocalServer,
) -> None:
    # 200 rollouts in namespace "noisy" ask a gate that never answers, each for up to 30 s;
    # a gate of namespace "quiet" is answered at once all the same.
    http = WebhookHTTP()
    noisy_payload = {**payload(), "namespace": "noisy"}
    with loopback.blackhole() as url:
        stuck = [
            asyncio.create_task(
                webhooks.call_gate(
                    spec(timeout="30s"), url, {}, noisy_payload, retry=ONCE, http=http
                )
            )
            for _ in range(200)
        ]
        try:
            await loopback.until(lambda: http.limiter.held("noisy") >= webhooks.PER_NAMESPACE)
            quiet = {**payload(), "namespace": "quiet"}
            result = await asyncio.wait_for(
                webhooks.call_gate(spec(), f"{server.url}/ok", {}, quiet, retry=ONCE, http=http),
                timeout=5,
            )
            assert result is GateResult.OPEN
            assert not any(task.done() for task in stuck)
            assert http.limiter.held("noisy") == webhooks.PER_NAMESPACE  # its share, no more
            assert http.limiter.waiting("noisy") == 200 - webhooks.PER_NAMESPACE
        finally:
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            await http.aclose()
