"""Logging format, secret redaction, and the operator's metrics."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from modelrollout import observability
from modelrollout.observability import (
    METRICS,
    REDACTED,
    OperatorMetrics,
    bind_rollout,
    configure_logging,
    get_logger,
    register_secret,
    start_metrics_server,
)

SECRET = "hunter2-s3cr3t-value"


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    observability.clear_secrets()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# ----------------------------------------------------------------------------- format


def test_json_lines_carry_bound_rollout_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = bind_rollout(get_logger("modelrollout.reconciler"), "ml", "fraud", "2.4.0", "canary-5")
    log.info("stage entered", weight=5)
    log.debug("not shown at info")
    (line,) = json_lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert line | {"timestamp": None} == {
        "timestamp": None,
        "level": "info",
        "logger": "modelrollout.reconciler",
        "event": "stage entered",
        "namespace": "ml",
        "rollout": "fraud",
        "version": "2.4.0",
        "stage": "canary-5",
        "weight": 5,
    }
    assert line["timestamp"].endswith("Z")


def test_bind_rollout_leaves_out_what_is_unknown() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    bind_rollout(get_logger(), "ml", "fraud").info("observed")
    (line,) = json_lines(out)
    assert "version" not in line and "stage" not in line and line["rollout"] == "fraud"


def test_stdlib_loggers_share_the_format() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    kopf_log = logging.getLogger("kopf.objects")
    ref = {"kind": "ModelRollout", "name": "fraud", "namespace": "ml"}
    kopf_log.info("Handler %r succeeded.", "reconcile", extra={"k8s_ref": ref, "k8s_skip": False})
    logging.getLogger("aiohttp.client").warning("plain")
    kopf_line, plain = json_lines(out)
    # kopf's object reference becomes the same fields bind_rollout() adds.
    assert kopf_line | {"timestamp": None} == {
        "timestamp": None,
        "level": "info",
        "logger": "kopf.objects",
        "event": "Handler 'reconcile' succeeded.",
        "namespace": "ml",
        "rollout": "fraud",
    }
    assert list(plain) == ["timestamp", "level", "logger", "event"]


def test_console_format_and_auto() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    get_logger().info("hello", rollout="fraud")
    text = out.getvalue()
    assert "hello" in text and "rollout=fraud" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    auto = io.StringIO()  # not a terminal: JSON
    configure_logging("info", "auto", stream=auto)
    get_logger().info("hello")
    assert json_lines(auto)[0]["event"] == "hello"


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "json", stream=second)
    logging.getLogger("kopf").warning("once")
    assert first.getvalue() == "" and len(json_lines(second)) == 1


def test_bad_level_or_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", "json")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_registered_secret_never_appears(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out)  # type: ignore[arg-type]
    register_secret(SECRET.encode())  # Secret data arrives as bytes
    log = get_logger("modelrollout.test")
    log.info(
        f"connecting with {SECRET}",
        url=f"https://prom/?key={SECRET}",
        nested={"list": [SECRET, 1], "deep": {"x": f"a{SECRET}b"}},
        obj=ValueError(SECRET),
    )
    try:
        raise RuntimeError(f"server rejected {SECRET}")
    except RuntimeError:
        log.exception("query failed")
        logging.getLogger("kopf.objects").exception("Handler failed with %s", SECRET)
    logging.getLogger("kopf.objects").warning("patching with %s", {"value": SECRET})
    text = out.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) >= 9
    assert "server rejected [REDACTED]" in text and "Traceback" in text


def test_credential_keys_are_redacted_without_registration() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    get_logger().info(
        "auth",
        token="t0k",
        password="pw",
        Authorization="Bearer x",
        api_key="k",
        apiKey="k",
        client_secret="s",
        bearer_token="b",
        headers={"X-Api-Key": "k", "Accept": "json"},
        secretName="prom-creds",
        token_ref="ref",
        user="alice",
    )
    (line,) = json_lines(out)
    for key in (
        "token",
        "password",
        "Authorization",
        "api_key",
        "apiKey",
        "client_secret",
        "bearer_token",
    ):
        assert line[key] == REDACTED, key
    assert line["headers"] == {"X-Api-Key": REDACTED, "Accept": "json"}
    # Keys that name a credential (not hold one) stay readable.
    assert (line["secretName"], line["token_ref"], line["user"]) == ("prom-creds", "ref", "alice")


def test_headers_secret_registers_each_value() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    register_secret('{"Authorization": "Bearer abcd-1234-efgh", "X-Team": "ml-platform-team"}\n')
    get_logger().info("sent Bearer abcd-1234-efgh for ml-platform-team")
    (line,) = json_lines(out)
    assert line["event"] == f"sent {REDACTED} for {REDACTED}"


def test_longest_secret_wins_and_short_values_are_ignored() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    register_secret("abcd")
    register_secret("abcdefgh")
    register_secret("ab")  # below MIN_SECRET_LENGTH: would garble every line
    get_logger().info("abcdefgh abcd ab")
    assert json_lines(out)[0]["event"] == f"{REDACTED} {REDACTED} ab"


# ----------------------------------------------------------------------------- metrics


def _sample(
    metrics: OperatorMetrics, name: str, labels: dict[str, str] | None = None
) -> float | None:
    value = metrics.registry.get_sample_value(name, labels or {})
    return value


def test_phase_gauge_counts_rollouts_per_phase() -> None:
    m = OperatorMetrics()
    m.observe_phase("ml", "a", "Progressing")
    m.observe_phase("ml", "b", "Progressing")
    m.observe_phase("ml", "c", "Succeeded")
    m.observe_phase("ml", "c", "Progressing")  # state, not a counter: c moved
    assert _sample(m, "modelrollout_rollouts", {"phase": "Progressing"}) == 3
    assert _sample(m, "modelrollout_rollouts", {"phase": "Succeeded"}) == 0
    m.forget("ml", "a")
    assert _sample(m, "modelrollout_rollouts", {"phase": "Progressing"}) == 2
    assert _sample(m, "modelrollout_rollouts", {"phase": "RolledBack"}) == 0


def test_event_counters_and_histograms_in_the_exposition() -> None:
    m = OperatorMetrics()
    m.stage_transition("ml", "fraud", "canary-5")
    m.analysis_verdict("error-rate", "Failed")
    m.rollback("ml", "fraud", "AnalysisFailed")
    m.rollback("ml", "fraud", "ProgressDeadlineExceeded: candidate not ready after 10m")
    m.rollback("ml", "fraud", "error-rate 0.05 > 0.01")  # free text must not become a series
    m.webhook_request("pre-rollout", "open")
    with m.time_reconcile():
        pass
    with m.time_prometheus_query():
        pass
    with pytest.raises(ConnectionError), m.time_prometheus_query():
        raise ConnectionError("prometheus down")
    text = m.exposition().decode()
    for series in (
        'modelrollout_stage_transitions_total{namespace="ml",rollout="fraud",to="canary-5"} 1.0',
        'modelrollout_analysis_verdicts_total{metric="error-rate",verdict="Failed"} 1.0',
        'modelrollout_rollbacks_total{namespace="ml",reason="AnalysisFailed",rollout="fraud"} 1.0',
        'modelrollout_rollbacks_total{namespace="ml",reason="Other",rollout="fraud"} 1.0',
        'modelrollout_rollbacks_total{namespace="ml",reason="ProgressDeadlineExceeded",'
        'rollout="fraud"} 1.0',
        'modelrollout_webhook_requests_total{outcome="open",type="pre-rollout"} 1.0',
        "modelrollout_reconcile_duration_seconds_count 1.0",
        "modelrollout_prometheus_query_duration_seconds_count 2.0",
        "modelrollout_prometheus_query_errors_total 1.0",
        'modelrollout_rollouts{phase="Idle"} 0.0',
    ):
        assert series in text, series


def test_forget_drops_the_series_of_a_deleted_rollout() -> None:
    m = OperatorMetrics()
    m.stage_transition("ml", "fraud", "canary-5")
    m.stage_transition("ml", "other", "canary-5")
    m.rollback("ml", "fraud", "Aborted")
    m.forget("ml", "fraud")
    text = m.exposition().decode()
    assert 'rollout="fraud"' not in text
    assert 'rollout="other"' in text


def test_module_helpers_feed_the_operator_registry() -> None:
    observability.observe_phase("ns-helpers", "r1", "Paused")
    before = _sample(METRICS, "modelrollout_rollouts", {"phase": "Paused"})
    assert before is not None and before >= 1
    observability.forget("ns-helpers", "r1")
    assert _sample(METRICS, "modelrollout_rollouts", {"phase": "Paused"}) == before - 1


def test_metrics_server_serves_metrics_and_healthz() -> None:
    m = OperatorMetrics()
    m.stage_transition("ml", "fraud", "full")
    healthy = {"ok": True}
    server = start_metrics_server(0, "127.0.0.1", metrics=m, healthy=lambda: healthy["ok"])
    try:
        base = f"http://127.0.0.1:{server.port}"
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert (
            'modelrollout_stage_transitions_total{namespace="ml",rollout="fraud",to="full"} 1.0'
            in metrics.text
        )
        assert httpx.get(f"{base}/healthz").text == "ok\n"
        healthy["ok"] = False
        assert httpx.get(f"{base}/healthz").status_code == 503
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        server.close()


def test_metrics_server_port_in_use_is_a_clear_error() -> None:
    first = start_metrics_server(0, "127.0.0.1", metrics=OperatorMetrics())
    try:
        with pytest.raises(OSError, match=rf"cannot serve metrics on 127.0.0.1:{first.port}"):
            start_metrics_server(first.port, "127.0.0.1", metrics=OperatorMetrics())
    finally:
        first.close()
