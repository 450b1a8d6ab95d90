"""Steering and watching a rollout on the lab: the kubectl plugin, webhook gates and
notifications, the operator's own metrics and Events (issue 10).

The plugin runs as the installed console script against the lab's apiserver; webhooks are tiny
HTTP servers in the test on 127.0.0.1 that the operator process calls.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import (
    Gateway,
    audit_problems,
    condition,
    create_route,
    history_of,
    operator_metric,
    parse_time,
    prom_value,
    rollout_manifest,
)

pytestmark = pytest.mark.lab

NAME = "scorer"
PLUGIN = Path(sys.executable).with_name("kubectl-modelrollout")
ALL_STAGES = ["shadow", "canary-5", "canary-25", "full"]


# --------------------------------------------------------------------------- helpers


class Plugin:
    """What one ``kubectl-modelrollout`` call printed and returned."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def ok(self) -> Plugin:
        assert self.code == 0, f"exit {self.code}\nstdout: {self.out}\nstderr: {self.err}"
        return self

    def actor(self) -> str:
        """The identity a control command was sent as (``..., by <actor>)``)."""
        found = re.search(r", by (.+)\)$", self.out.strip())
        assert found, self.out
        return found.group(1)


def run_plugin(lab: Lab, namespace: str, *args: str, timeout: float = 60) -> Plugin:
    done = subprocess.run(
        [str(PLUGIN), "--kubeconfig", str(lab.kubeconfig), "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Plugin(done.returncode, done.stdout, done.stderr)


def status_when(
    rollouts: Rollouts,
    what: str,
    predicate: Callable[[dict[str, Any]], Any],
    timeout: float = 90,
    name: str = NAME,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = rollouts.status(name)
        return status if predicate(status) else None

    return wait_for(what, probe, timeout=timeout)


def stage_of(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("stage") or {}


def since_last(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """The audit entries from the last ``event`` entry on."""
    history = status.get("history") or []
    marks = [i for i, h in enumerate(history) if h["event"] == event]
    assert marks, f"no {event} in {[h['event'] for h in history]}"
    return list(history[marks[-1] :])


def entered(entries: list[dict[str, Any]]) -> list[str]:
    return [h["to"] for h in entries if h["event"] == "StageEntered"]


@contextmanager
def loaded(gateway: Gateway, namespace: str, name: str = NAME, rps: float = 40) -> Iterator[None]:
    gateway.start_load(namespace, "gatewayAPI", name, rps=rps)
    try:
        yield
    finally:
        gateway.stop_load(namespace, "gatewayAPI", name)


def initialize(rollouts: Rollouts, kube_api: k8s.ApiClient, namespace: str) -> None:
    create_route(kube_api, namespace, "gatewayAPI", NAME)
    rollouts.apply(rollout_manifest(NAME, "1.0.0"))
    rollouts.wait_phase(NAME, "Succeeded", timeout=90)


class Receiver:
    """A webhook target on 127.0.0.1 (a free port): records every POST's JSON body and answers
    ``status``, which the test may change at any time."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.bodies: list[Any] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.bodies.append(json.loads(raw or b"null"))
                    code = receiver.status
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def received(self) -> list[Any]:
        with self._lock:
            return list(self.bodies)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- a. manual control

ERROR_RATE = {"name": "error-rate", "template": "error-rate", "max": 0.5}
METRIC_LINE = re.compile(r"^\s+error-rate\s+(\d[\d.e+-]*)\s+<= 0\.5\s+Successful\b", re.MULTILINE)


def test_manual_control_through_the_kubectl_plugin(
    crd: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    def plugin(*args: str, timeout: float = 60) -> Plugin:
        return run_plugin(crd, namespace, *args, timeout=timeout)

    missing = plugin("status", "no-such-rollout")
    assert missing.code == 1 and missing.out == ""
    assert f'modelrollout "no-such-rollout" not found in namespace "{namespace}"' in missing.err

    initialize(rollouts, kube_api, namespace)
    canary_5_s = 10
    stages = [
        {"name": "shadow", "mirror": 100, "duration": "4s"},
        {"name": "canary-5", "weight": 5, "duration": f"{canary_5_s}s"},
        {"name": "canary-25", "weight": 25, "duration": "5m"},
        {"name": "full", "weight": 100},
    ]
    with loaded(gateway, namespace):
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=stages, metrics=[ERROR_RATE]))
        rollouts.wait_stage(NAME, "canary-5", timeout=90)

        # status: stage, weights, versions, and the metric's latest value against its bound.
        def status_with_metric() -> list[str] | None:
            shown = plugin("status", NAME).ok().out  # (wait_for takes a bare str as "not yet")
            return [shown] if "canary-5" in shown and METRIC_LINE.search(shown) else None

        [shown] = wait_for("status to show error-rate against its bound", status_with_metric, 30)
        assert re.search(r"^Stage:\s+canary-5 \(2/4\), weight 5%, mirror 0%$", shown, re.M), shown
        assert re.search(r"^Traffic:\s+stable 95%\s+candidate 5%\s+mirror 0%$", shown, re.M)
        assert re.search(r"^Stable:\s+breast-cancer 1\.0\.0\s", shown, re.M), shown
        assert re.search(r"^Candidate:\s+breast-cancer 2\.0\.0\s", shown, re.M), shown
        found = METRIC_LINE.search(shown)
        assert found and 0 <= float(found.group(1)) <= 0.5, shown

        # pause: the stage does not end although its duration passes.
        actor = plugin("pause", NAME).ok().actor()
        paused = rollouts.wait_phase(NAME, "Paused", timeout=30)
        ready_at = stage_of(paused)["readyAt"]
        stage_over = parse_time(ready_at) + canary_5_s + 2
        while time.time() < stage_over:
            status = rollouts.status(NAME)
            assert (status["phase"], stage_of(status)["name"]) == ("Paused", "canary-5"), status
            time.sleep(0.5)  # sampling period of an observation window, not a wait
        assert stage_of(rollouts.status(NAME))["readyAt"] == ready_at

        # resume: it carries on into canary-25 (5 minutes long).
        plugin("resume", NAME).ok()
        rollouts.wait_stage(NAME, "canary-25", timeout=60)

        # promote: skips the rest, the candidate is the stable.
        plugin("promote", NAME).ok()
        promoted = status_when(
            rollouts, "2.0.0 promoted", lambda s: s.get("stableVersion") == "2.0.0", 30
        )
        assert promoted["phase"] == "Succeeded" and promoted["stableSlot"] == "b"
        rollout = since_last(promoted, "RolloutStarted")
        assert entered(rollout) == ["shadow", "canary-5", "canary-25"]
        commands = [(h["reason"], h["actor"]) for h in history_of(promoted, "Command")]
        assert commands == [
            ("pause accepted", actor),
            ("resume accepted", actor),
            ("promote accepted", actor),
        ]
        [promotion] = history_of(promoted, "Promoted")
        assert promotion["actor"] == actor and promotion["from"] == "canary-25"

        # abort a further version, then retry it: it rolls out again from stage 0.
        fast = [dict(s, duration="3s") if s.get("duration") else s for s in stages]
        rollouts.apply(rollout_manifest(NAME, "3.0.0", stages=fast))
        rollouts.wait_stage(NAME, "shadow", timeout=30)
        plugin("abort", NAME).ok()
        aborted = rollouts.wait_phase(NAME, "RolledBack", timeout=30)
        assert aborted["rollbackReason"] == f"aborted by {actor}"
        assert aborted["stableVersion"] == "2.0.0"

        plugin("retry", NAME).ok()
        status_when(
            rollouts,
            "the retry to start",
            lambda s: (
                s.get("phase") == "Progressing"
                and since_last(s, "RolloutStarted")[0]["reason"] == f"retry by {actor}"
            ),
            timeout=30,
        )
        watched = plugin("watch", NAME, "--timeout", "2m", timeout=150)
        assert watched.code == 0, (watched.out[-2000:], watched.err)
        done = rollouts.status(NAME)
        assert done["phase"] == "Succeeded" and done["stableVersion"] == "3.0.0"
        retried = since_last(done, "RolloutStarted")
        assert (retried[0]["model"]["version"], retried[0]["actor"]) == ("3.0.0", actor)
        assert entered(retried) == ALL_STAGES
        assert audit_problems(done) == []


# --------------------------------------------------------------------------- b. gates


def test_confirm_promotion_gate_holds_the_last_canary_until_it_opens(
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    initialize(rollouts, kube_api, namespace)
    canary_25_s = 4
    stages = [
        {"name": "shadow", "mirror": 100, "duration": "3s"},
        {"name": "canary-5", "weight": 5, "duration": "3s"},
        {"name": "canary-25", "weight": 25, "duration": f"{canary_25_s}s"},
        {"name": "full", "weight": 100},
    ]
    with (
        Receiver(200) as pre,
        Receiver(503) as confirm,
        Receiver(200) as slack,
        loaded(gateway, namespace),
    ):
        hooks = [
            {"name": "pre", "type": "pre-rollout", "url": pre.url},
            {"name": "confirm", "type": "confirm-promotion", "url": confirm.url},
            {"name": "slack", "type": "notify", "url": slack.url},
        ]
        rollouts.apply(rollout_manifest(NAME, "2.0.0", stages=stages, webhooks=hooks))

        # The pre-rollout gate was asked, and answered, before shadow got its traffic.
        shadow = status_when(
            rollouts, "shadow with traffic", lambda s: stage_of(s).get("readyAt"), timeout=60
        )
        asked = pre.received()
        assert asked and asked[0]["type"] == "pre-rollout", asked
        assert asked[0]["model"]["version"] == "2.0.0" and asked[0]["stage"] == "shadow"
        [ready] = [h for h in history_of(shadow, "CandidateReady") if h["to"] == "shadow"]
        assert "gates open: pre" in ready["reason"], ready

        # canary-25 is complete, but the confirm-promotion gate answers 503: it holds there.
        in_25 = rollouts.wait_stage(NAME, "canary-25", timeout=90)
        wait_for("the confirm-promotion gate to be asked", confirm.received, timeout=60)
        status = status_when(
            rollouts,
            "the status to say it waits for the gate",
            lambda s: "waiting for confirm-promotion gates: confirm" in s.get("message", ""),
            timeout=15,
        )
        stage_over = parse_time(stage_of(in_25)["readyAt"]) + canary_25_s + 6
        while time.time() < stage_over or len(confirm.received()) < 3:
            status = rollouts.status(NAME)
            assert (status["phase"], stage_of(status)["name"]) == ("Progressing", "canary-25")
            assert "waiting for confirm-promotion gates: confirm" in status["message"], status
            time.sleep(0.5)  # sampling period of an observation window, not a wait
        waiting = condition(status, "Reconciling")
        assert "waiting for confirm-promotion gates: confirm" in waiting["message"], waiting
        asks = confirm.received()
        assert {(b["type"], b["stage"], b["model"]["version"]) for b in asks} == {
            ("confirm-promotion", "canary-25", "2.0.0")
        }, asks
        assert not history_of(status, "Promoted")

        confirm.status = 200
        done = status_when(
            rollouts, "2.0.0 promoted", lambda s: s.get("stableVersion") == "2.0.0", timeout=60
        )
        assert done["phase"] == "Succeeded"
        assert entered(since_last(done, "RolloutStarted")) == ALL_STAGES

        # Slack-shaped notifications of the stage changes and of the promotion.
        wanted = [
            "entered stage canary-5",
            "entered stage canary-25",
            "entered stage full",
            "2.0.0 promoted",
        ]

        def notified() -> list[Any] | Exception | None:
            bodies = slack.received()
            texts = [b.get("text", "") for b in bodies]
            if all(any(w in t for t in texts) for w in wanted):
                return bodies
            return ValueError(f"texts so far: {texts}")  # shown if it times out

        bodies = wait_for("the notifications", notified, timeout=30)
        assert isinstance(bodies, list)
        for body in bodies:
            assert isinstance(body["text"], str) and body["text"].startswith(
                f"ModelRollout {namespace}/{NAME}:"
            ), body
            assert body["blocks"][0]["type"] == "section", body
            assert re.fullmatch(r"#[0-9a-f]{6}", body["attachments"][0]["color"]), body


# --------------------------------------------------------------------------- c. a breach, seen


def test_a_breach_shows_in_history_operator_metrics_and_events(
    crd: Lab,
    rollouts: Rollouts,
    operator: OperatorProcess,
    kube_api: k8s.ApiClient,
    namespace: str,
    gateway: Gateway,
) -> None:
    initialize(rollouts, kube_api, namespace)
    with loaded(gateway, namespace):
        rollouts.apply(
            rollout_manifest(
                NAME,
                "2.0.0",
                env={"FAULT_ERROR_RATE": "0.5"},
                metrics=[{"name": "error-rate", "template": "error-rate", "max": 0.05}],
            )
        )
        failed = rollouts.wait_phase(NAME, "RolledBack", timeout=90)
        # Prometheus agrees: the candidate (slot b) answered about half its requests with 5xx.
        selector = f'namespace="{namespace}",service="{NAME}-b"'
        ratio = prom_value(
            crd.prometheus_url,
            f'sum(increase(model_requests_total{{{selector},code=~"5.."}}[2m]))'
            f" / sum(increase(model_requests_total{{{selector}}}[2m]))",
        )
    assert ratio is not None and 0.3 < ratio < 0.7, ratio
    assert failed["stableVersion"] == "1.0.0"
    assert failed["rollbackReason"].startswith("analysis failed: error-rate = ")

    # kubectl modelrollout history -o json: the breach with its value, bound and query.
    entries = json.loads(run_plugin(crd, namespace, "history", NAME, "-o", "json").ok().out)
    [breach] = [e for e in entries if e["event"] == "RolledBack"]
    assert breach["reason"].startswith("AnalysisFailed:"), breach
    [metric] = [m for m in breach["metrics"] if m["name"] == "error-rate"]
    assert metric["verdict"] == "Failed" and metric["value"] > 0.05, metric
    assert metric["bound"] == "<= 0.05", metric
    assert "model_requests_total" in metric["query"], metric
    assert f'service="{NAME}-b"' in metric["query"] and namespace in metric["query"], metric

    # The operator's own metrics count the rollback and the stage transition.
    labels = {"namespace": namespace, "rollout": NAME}
    rollbacks = operator_metric(
        operator.metrics_url, "modelrollout_rollbacks_total", reason="AnalysisFailed", **labels
    )
    assert rollbacks is not None and rollbacks >= 1, rollbacks
    transitions = operator_metric(
        operator.metrics_url, "modelrollout_stage_transitions_total", to="shadow", **labels
    )
    assert transitions is not None and transitions >= 1, transitions

    # And a Kubernetes Event on the ModelRollout says why it rolled back.
    def rollback_event() -> list[Any]:
        return [
            e
            for e in rollouts.events(NAME)
            if e.reason == "AnalysisFailed" and "rolled back to 1.0.0" in (e.message or "")
        ]

    [event] = wait_for("the rollback's Event", rollback_event, timeout=30)
    assert event.type == "Warning" and "error-rate" in event.message, event.message
