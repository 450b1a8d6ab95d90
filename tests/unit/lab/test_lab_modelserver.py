"""The lab's model server: configuration, fault knobs, metrics contract, and the real process."""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e2e.modelserver.config import ConfigError, from_env
from e2e.modelserver.model import Model
from e2e.modelserver.server import App

REPO = Path(__file__).resolve().parents[3]
IDENTITY = {
    "POD_NAMESPACE": "ml",
    "POD_NAME": "m-1",
    "SERVICE_NAME": "m-canary",
    "MODEL_VERSION": "2.0.0",
    "MODEL_NAME": "bc",
}


def app(**env: str) -> App:
    # No base latency: these tests call predict() many times.
    return App(from_env({**IDENTITY, "BASE_LATENCY_MS": "0", **env}), seed=7)


def samples(a: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(a.metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class TestConfig:
    def test_defaults(self) -> None:
        cfg = from_env({})
        assert cfg.port == 8080
        assert cfg.faults.error_rate == 0.0
        assert cfg.faults.latency_factor == 1.0
        assert cfg.faults.crash_after_s is None
        assert not cfg.faults.shuffled_labels
        assert cfg.startup_delay_s == 0.0
        assert from_env({"STARTUP_DELAY_S": "8"}).startup_delay_s == 8.0

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            (
                {"FAULT_ERROR_RATE": "abc"},
                r"FAULT_ERROR_RATE must be a number in \[0, 1\], got 'abc'",
            ),
            ({"FAULT_ERROR_RATE": "1.5"}, r"FAULT_ERROR_RATE must be a number in \[0, 1\]"),
            ({"FAULT_LATENCY_MS": "-3"}, "FAULT_LATENCY_MS must be a number"),
            ({"FAULT_SHUFFLED_LABELS": "maybe"}, "FAULT_SHUFFLED_LABELS must be true or false"),
            ({"PORT": "http"}, "PORT must be an integer"),
            ({"FAULT_CRASH_AFTER_S": "nan"}, "FAULT_CRASH_AFTER_S must be a number"),
            ({"STARTUP_DELAY_S": "-1"}, r"STARTUP_DELAY_S must be a number in \[0, 600\]"),
        ],
    )
    def test_bad_values_are_named(self, env: dict[str, str], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            from_env(env)

    def test_threshold_alone_means_every_request_above_it_fails(self) -> None:
        cfg = from_env({"FAULT_ERROR_RATE_ABOVE_RPS": "50"})
        assert (cfg.faults.error_rate, cfg.faults.error_rate_above_rps) == (1.0, 50.0)


class TestFaults:
    def test_error_rate_is_the_share_of_500s_and_is_counted(self) -> None:
        a = app(FAULT_ERROR_RATE="0.2")
        n = 2000
        codes = [a.predict(b"")[0] for _ in range(n)]
        errors = codes.count(500)
        assert set(codes) == {200, 500}
        assert abs(errors / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
        s = samples(a)
        labels = tuple(sorted({**_const(), "code": "500"}.items()))
        assert s[("model_requests_total", labels)] == errors

    def test_errors_only_above_the_load_threshold(self) -> None:
        a = app(FAULT_ERROR_RATE="1", FAULT_ERROR_RATE_ABOVE_RPS="10")
        assert not any(a.should_fail(5.0) for _ in range(100))
        assert all(a.should_fail(50.0) for _ in range(100))

    def test_latency_has_jitter_and_the_knobs_shift_it(self) -> None:
        def median_ms(**env: str) -> float:
            a = App(from_env({"BASE_LATENCY_MS": "6", **env}), seed=1)
            return 1000 * statistics.median(a.latency_s() for _ in range(4000))

        base = median_ms()
        spread = App(from_env({}), seed=1)
        values = [spread.latency_s() for _ in range(1000)]
        assert 5.5 < base < 6.5
        assert max(values) > 1.3 * min(values)  # lognormal jitter, not a constant
        assert median_ms(FAULT_LATENCY_FACTOR="1.3") == pytest.approx(1.3 * base, rel=0.05)
        assert median_ms(FAULT_LATENCY_MS="50") == pytest.approx(base + 50, rel=0.02)

    def test_shuffled_labels_give_a_worse_model_with_other_scores(self) -> None:
        good, bad = Model(), Model(shuffled_labels=True)
        x, y = good._x, _labels()
        good_scores = np.array([p.score for p in good.predict(x)])
        bad_scores = np.array([p.score for p in bad.predict(x)])
        assert ((good_scores >= 0.5) == y).mean() > 0.95
        assert ((bad_scores >= 0.5) == y).mean() < 0.8
        # the good model is sure of itself; the shuffled one is not
        assert ((good_scores > 0.1) & (good_scores < 0.9)).mean() < 0.1
        assert ((bad_scores > 0.1) & (bad_scores < 0.9)).mean() > 0.3


def _const() -> dict[str, str]:
    return {
        "namespace": "ml",
        "pod": "m-1",
        "service": "m-canary",
        "version": "2.0.0",
        "model": "bc",
    }


def _labels() -> Any:
    from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped]

    return np.asarray(load_breast_cancer().target)


class TestMetricsContract:
    def test_names_buckets_and_const_labels(self) -> None:
        a = app()
        body = json.dumps({"instances": [[1.0] * 30, [20.0] * 30]}).encode()
        code, doc = a.predict(body)
        assert code == 200
        assert len(doc["predictions"]) == 2
        assert doc["version"] == "2.0.0"
        s = samples(a)
        const = _const()
        key = tuple(sorted({**const, "code": "200"}.items()))
        assert s[("model_requests_total", key)] == 1
        score_les = {dict(k[1])["le"] for k in s if k[0] == "model_prediction_score_bucket"}
        assert score_les == {f"{0.1 * i:.1f}" for i in range(1, 11)} | {"+Inf"}
        dur = {
            float(dict(k[1])["le"]) for k in s if k[0] == "model_request_duration_seconds_bucket"
        }
        assert min(dur) == 0.001
        assert max(d for d in dur if d != float("inf")) == 2.0
        assert len([d for d in dur if 0.004 <= d <= 0.012]) >= 8  # fine where the base lives
        assert s[("model_prediction_score_count", tuple(sorted(const.items())))] == 2
        for name, labels in s:
            if name.startswith("model_"):
                assert const.items() <= dict(labels).items()

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"instances": []}', "non-empty list"),
            (b'{"instances": [[1, 2]]}', r"instances\[0\] must be a list of 30 numbers, got 2"),
            (
                json.dumps({"instances": [["x"] * 30]}).encode(),
                r"instances\[0\]\[0\] must be a num",
            ),
        ],
    )
    def test_bad_requests_get_400_with_the_reason(self, body: bytes, message: str) -> None:
        a = app(FAULT_ERROR_RATE="1")
        code, doc = a.predict(body)
        assert code == 400
        assert re.search(message, doc["error"])


# --- the real process ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(**env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.modelserver"],
        env={**os.environ, **IDENTITY, "PORT": str(port), **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, port


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"model server on {port} not healthy after {timeout}s")


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = _start()
    try:
        _wait_healthy(proc, port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_process_serves_predictions_and_metrics(server: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{server}/predict", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        doc = json.load(r)
    assert 0.0 <= doc["predictions"][0]["score"] <= 1.0
    assert doc["pod"] == "m-1"
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert (
        'model_requests_total{code="200",model="bc",namespace="ml",pod="m-1",'
        'service="m-canary",version="2.0.0"} 1.0' in text
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{server}/nope", timeout=5)
    assert err.value.code == 404


def test_process_crashes_when_told_to() -> None:
    proc, port = _start(FAULT_CRASH_AFTER_S="3")
    try:
        _wait_healthy(proc, port)
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
        proc.wait()


def test_process_refuses_bad_configuration() -> None:
    proc, _ = _start(FAULT_ERROR_RATE="often")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"FAULT_ERROR_RATE must be a number" in err
