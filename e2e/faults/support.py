"""Building blocks of the fault suite.

- :class:`FakeServer`: a scriptable HTTP server on 127.0.0.1 standing in for a Prometheus or a
  webhook that misbehaves (slow, hanging, garbage, an HTTP error), per path prefix, recording
  every request it gets.
- History checks: a rollout's audit trail split into attempts, the stage sequence of each, the
  hash chain (:func:`modelrollout.audit.verify`).
- The operator as the Helm chart's ServiceAccount (:func:`install_chart_rbac`), its own metrics
  (:func:`reconcile_count`), and a JSON record of each fault's counts for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import REPO, OperatorProcess, Rollouts, Timeout, wait_for
from e2e.lab.controlplane import Lab
from modelrollout import audit
from modelrollout.api.models import HistoryEntry

CHART = REPO / "charts" / "modelrollout-operator"
PEERING_CRDS = CHART / "crds" / "kopf-peerings.yaml"
TERMINAL = frozenset({"Succeeded", "RolledBack", "Failed"})


# ------------------------------------------------------------------------- fake HTTP server


@dataclass
class Behaviour:
    """How the fake server answers requests under one path prefix.

    ``delay`` seconds before answering (a "hang" is a delay longer than any client timeout);
    then ``status`` with ``body`` (bytes, or any JSON-able value).
    """

    status: int = 200
    body: Any = b""
    delay: float = 0.0
    content_type: str = "application/json"


def prometheus_value(value: str = "0") -> dict[str, Any]:
    """A well-formed instant-query answer with one series of ``value``."""
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [time.time(), value]}]},
    }


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class FakeServer:
    """An HTTP server on 127.0.0.1 (a free port) answering per path prefix as told.

    ``server.url("/slow")`` is the base URL of one behaviour; ``server.set("/slow", Behaviour(
    delay=30))`` changes it at any time. Unknown prefixes answer 404. Delays end early when the
    server is closed, so a hanging request never outlives the test.
    """

    def __init__(self) -> None:
        self._behaviours: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.requests: list[Request] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server._lock:
                    server.requests.append(
                        Request(self.command, self.path, dict(self.headers.items()), body)
                    )
                behaviour = server.behaviour_for(self.path)
                if behaviour is None:
                    self._send(404, b"no such fake", "text/plain")
                    return
                if behaviour.delay and server._closing.wait(behaviour.delay):
                    return
                payload = behaviour.body
                if not isinstance(payload, bytes):
                    payload = json.dumps(payload).encode()
                # OSError: the client gave up waiting, exactly what a slow server causes.
                with contextlib.suppress(OSError):
                    self._send(behaviour.status, payload, behaviour.content_type)

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def set(self, prefix: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviours[prefix] = behaviour

    def behaviour_for(self, path: str) -> Behaviour | None:
        with self._lock:
            matches = [p for p in self._behaviours if path == p or path.startswith(p + "/")]
            return self._behaviours[max(matches, key=len)] if matches else None

    def received(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == prefix or r.path.startswith(prefix + "/")]

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------- history


def history(status: dict[str, Any]) -> list[HistoryEntry]:
    return [HistoryEntry.model_validate(h) for h in status.get("history") or []]


@dataclass
class Attempt:
    """One rollout of one version: its audit entries from RolloutStarted to the next one."""

    version: str
    entries: list[HistoryEntry]

    @property
    def stages_entered(self) -> list[str]:
        return [e.to_stage or "" for e in self.entries if e.event == "StageEntered"]

    @property
    def outcomes(self) -> list[str]:
        """The terminal transitions of the attempt (exactly one when it finished cleanly)."""
        return [e.event for e in self.entries if e.event in ("Promoted", "RolledBack", "Failed")]


def attempts(entries: Sequence[HistoryEntry]) -> list[Attempt]:
    """Split a trail at each RolloutStarted; entries before the first one are left out (the
    first version's initialisation, or a start that the bounded history already dropped)."""
    found: list[Attempt] = []
    for entry in entries:
        if entry.event == "RolloutStarted":
            found.append(Attempt(entry.model.version if entry.model else "?", [entry]))
        elif found:
            found[-1].entries.append(entry)
    return found


def stage_problems(attempt: Attempt, stage_names: Sequence[str]) -> list[str]:
    """A skipped, repeated or reordered stage: the sequence must be a prefix of the stages."""
    seen = attempt.stages_entered
    if seen != list(stage_names[: len(seen)]):
        return [f"{attempt.version}: stages entered {seen}, expected a prefix of {stage_names}"]
    return []


def chain_problems(status: dict[str, Any]) -> list[str]:
    return audit.verify(history(status))


def promoted_versions(status: dict[str, Any]) -> list[str]:
    """Every version the trail says became stable (first version included)."""
    return [
        e.model.version
        for e in history(status)
        if e.event in ("Promoted", "Initialized") and e.model is not None
    ]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


# ------------------------------------------------------------------------- operator metrics


def operator_metrics(op: OperatorProcess) -> dict[str, float]:
    """The operator's /metrics as {sample name{labels}: value}."""
    text = httpx.get(op.metrics_url, timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def reconcile_count(op: OperatorProcess) -> float:
    """How many reconciles this operator process has run (0 when it is not up)."""
    try:
        return operator_metrics(op).get("modelrollout_reconcile_duration_seconds_count{}", 0.0)
    except httpx.HTTPError:
        return 0.0


def healthz(op: OperatorProcess) -> int:
    return httpx.get(op.metrics_url.replace("/metrics", "/healthz"), timeout=5).status_code


# -------------------------------------------------------------------- the chart's identity


@dataclass
class ChartIdentity:
    """The chart's RBAC for one namespace and a kubeconfig acting as its ServiceAccount."""

    release: str
    service_account: str
    kubeconfig: Path
    peering: str
    cluster_objects: list[tuple[str, str]]


def install_chart_rbac(lab: Lab, namespace: str, *, leader_election: bool = False) -> ChartIdentity:
    """``helm template`` the chart's ServiceAccount, RBAC (and peering object) for
    ``namespace`` and apply them; the kubeconfig authenticates as that ServiceAccount."""
    release = f"mro-{uuid.uuid4().hex[:6]}"
    shown = ["templates/rbac.yaml", "templates/serviceaccount.yaml"]
    if leader_election:
        shown.append("templates/peering.yaml")
    args = [
        str(lab.bin_dir / "helm"), "template", release, str(CHART), "--namespace", namespace,
        "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"leaderElection.enabled={'true' if leader_election else 'false'}",
        "--set", "rbac.readSecrets=true",
    ]  # fmt: skip
    for path in shown:
        args += ["--show-only", path]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    lab.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    token = lab.mint_token(namespace, sa, create=False)
    kubeconfig = lab.write_kubeconfig(
        lab.paths.dir / "faults" / f"{release}.kubeconfig", token=token, user=sa
    )
    cluster = [
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]
    return ChartIdentity(release, sa, kubeconfig, f"{release}-modelrollout-operator", cluster)


def remove_chart_rbac(lab: Lab, identity: ChartIdentity) -> None:
    for kind, name in identity.cluster_objects:
        lab.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
    identity.kubeconfig.unlink(missing_ok=True)


def install_peering_crds(lab: Lab) -> None:
    lab.kubectl("apply", "-f", str(PEERING_CRDS))
    lab.wait_established("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")


# --------------------------------------------------------------------------------- leaks


def leaks(secret: str, *texts: str) -> list[str]:
    """Which of ``texts`` (log file, events, status dumps) contain ``secret``."""
    return [t[:80] for t in texts if secret in t]


def events_text(api: k8s.ApiClient, namespace: str) -> str:
    items = k8s.CoreV1Api(api).list_namespaced_event(namespace).items
    return "\n".join(f"{e.reason} {e.message}" for e in items)


# ------------------------------------------------------------------------------- records


def record(lab: Lab, fault: str, counts: dict[str, Any]) -> None:
    """Keep this run's counts of ``fault`` in .lab/faults/summary.json (docs/reliability.md is
    written from it by hand) and print them (pytest -s shows them)."""
    path = lab.paths.dir / "faults" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = {}
    summary[fault] = {**counts, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nfault {fault}: {json.dumps(counts, sort_keys=True)}")


def polling(until: float, every: float = 0.2) -> Iterator[None]:
    """Yield every ``every`` seconds until the monotonic time ``until``: the body of a loop that
    does work between scheduled fault injections (the schedule, not a condition, ends it)."""
    while time.monotonic() < until:
        yield
        time.sleep(min(every, max(0.0, until - time.monotonic())))


def wait_promoted(rollouts: Rollouts, name: str, version: str, timeout: float) -> dict[str, Any]:
    """Wait until ``version`` is the stable version and the rollout Succeeded; on a timeout the
    error shows the status."""

    def probe() -> dict[str, Any] | None:
        status = rollouts.status(name)
        ok = status.get("phase") == "Succeeded" and status.get("stableVersion") == version
        return status if ok else None

    try:
        return wait_for(f"{name} to promote {version}", probe, timeout=timeout)
    except Timeout as exc:
        status = rollouts.status(name)
        raise Timeout(f"{exc}\nstatus: {yaml.safe_dump(status)[:4000]}") from None
