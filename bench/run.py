"""``python -m bench.run``: the operator under N concurrent rollouts, on the lab.

    python -m bench.run                      # N = 100 and N = 1000, on a lab of its own
    python -m bench.run --sizes 100,300,1000 --profile
    python -m bench.run --sizes 20 --lab shared

One round per size N, all against ONE operator process (``modelrollout run``, as in production):

1. N HTTPRoutes and N ModelRollouts (version 1.0.0) in a few namespaces; their pods carry
   ``lab.modelrollout.dev/no-process`` (the node simulator marks them Ready without starting a
   model server) and one exporter process (:mod:`bench.exporter`, registered as a Prometheus
   file_sd target) serves ``model_requests_total`` for every slot Service. Wait until all N
   first versions are Succeeded.
2. The measured window: every rollout gets version 2.0.0 (stages canary-10 and canary-50 of
   ``--stage-duration`` seconds, then full; the built-in error-rate check, max 0.01, every
   ``--interval`` seconds, in every stage). A ``--breach-fraction`` of them get 5% errors on their
   candidate Service as soon as the bench sees their first stage ready, and must roll back; the
   others must be promoted. The window ends when every rollout is terminal.
3. Figures (see :mod:`bench.measure` for the definitions): transition lag from the status
   history, route lag and breach-to-rollback from the bench's own watch on the routes and its
   Prometheus queries, operator peak RSS (/proc VmHWM) and CPU, the operator's apiserver writes
   per stage change (apiserver_request_total deltas by resource, minus the bench's own writes,
   plus the Events about the rollouts), Prometheus queries per rollout and analysis interval
   (the operator's modelrollout_prometheus_query_duration_seconds_count).

Results: ``bench/results/latest.json`` and ``latest.md``; with ``--profile`` also a py-spy
profile of the window per size (``bench/results/profiles/``).

By default the bench runs its own lab in ``~/.cache/modelrollout-bench`` (started here, stopped
at the end unless ``--keep-lab``), so 1,000 rollouts never slow down tests on the shared lab.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from bench import measure
from bench.labenv import DEFAULT_ROOT, REPO, bench_lab
from bench.measure import StagePlan
from bench.probes import (
    ProcSampler,
    WriteKey,
    apiserver_samples,
    cpu_seconds,
    mean_between,
    quantile_between,
    reads_between,
    scrape,
    total,
    writes,
)
from bench.profile import PySpy, summarise
from bench.watch import TERMINAL, Recorder
from e2e.harness import OperatorProcess, free_port, install_crd, release_rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import httproute, rollout_manifest

log = logging.getLogger("bench")

RUN_LABEL = "bench.modelrollout.dev/run"
NO_PROCESS = "lab.modelrollout.dev/no-process"
RESULTS = REPO / "bench" / "results"
V1, V2 = "1.0.0", "2.0.0"
ROLLOUT_PATCH: WriteKey = ("PATCH", "modelrollout.dev", "modelrollouts", "")
T = TypeVar("T")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Config:
    """One benchmark invocation (every size uses the same settings)."""

    sizes: tuple[int, ...] = (100, 1000)
    interval_s: int = 5
    stage_s: int = 10
    breach_fraction: float = 0.1
    error_rate: float = 0.05
    threshold: float = 0.01
    rps: float = 5.0
    namespaces: int | None = None  # None: one per 50 rollouts, 1 to 4
    profile: bool = False
    memory_profile: bool = False
    out_dir: Path = RESULTS
    settle_timeout_s: float | None = None  # None: scaled with N
    operator_args: tuple[str, ...] = ()
    operator_env: tuple[tuple[str, str], ...] = ()
    workers: int = 8  # the bench's own API calls in parallel

    def plan(self) -> list[StagePlan]:
        return [
            StagePlan("canary-10", 10, self.stage_s, checked=True),
            StagePlan("canary-50", 50, self.stage_s, checked=True),
            StagePlan("full", 100, 0, checked=True),
        ]

    def stages(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "weight": s.weight,
                **({"duration": f"{s.duration_s:g}s"} if s.duration_s else {}),
            }
            for s in self.plan()
        ]

    def namespace_count(self, n: int) -> int:
        return self.namespaces or max(1, min(4, math.ceil(n / 50)))

    def breaches(self, n: int) -> int:
        return min(n, round(n * self.breach_fraction)) if self.breach_fraction > 0 else 0

    def settle_timeout(self, n: int) -> float:
        return self.settle_timeout_s or 240.0 + 0.6 * n


@dataclass(frozen=True)
class Target:
    name: str
    field: str
    limit: float
    unit: str


def targets(cfg: Config) -> list[Target]:
    """Issue 11's targets, as (result field, upper limit)."""
    return [
        Target("transition lag p99", "transition_lag_p99_s", 2.0, "s"),
        Target("breach to rollback p99", "breach_to_rollback_p99_s", cfg.interval_s + 2.0, "s"),
        Target("operator peak RSS", "operator_rss_mib_peak", 300.0, "MiB"),
        Target("apiserver writes per stage change", "apiserver_writes_per_rollout_stage", 2.0, ""),
        # The same without the writes a rollout makes once, at its start and end (the
        # candidate's Deployment and Service, the old stable scaled down): the status write
        # that records the stage change and the route write.
        Target(
            "apiserver writes per stage change, status and route only",
            "apiserver_status_and_route_writes_per_rollout_stage",
            2.0,
            "",
        ),
    ]


# ------------------------------------------------------------------------------ helpers


def _parallel(fn: Callable[[T], None], items: Iterable[T], workers: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


class Exporter:
    """The synthetic metrics process (:mod:`bench.exporter`) and its Prometheus target file."""

    def __init__(self, lab: Lab, run_id: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target_file = lab.prometheus_targets_dir / f"bench-{run_id}.json"
        self.log_path = lab.paths.logs / f"bench-exporter-{run_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Exporter:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.exporter", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench exporter exited; see {self.log_path}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the bench exporter's /healthz", healthy, timeout=30)
        self.target_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"]}]))
        tmp.replace(self.target_file)  # Prometheus must never read half a file
        return self

    def set(self, services: Sequence[tuple[str, str]], rps: float, error_rate: float) -> None:
        body = {
            "services": [
                {"namespace": ns, "service": svc, "rps": rps, "errorRate": error_rate}
                for ns, svc in services
            ]
        }
        httpx.put(f"{self.url}/services", json=body, timeout=30).raise_for_status()

    def stop(self) -> None:
        self.target_file.unlink(missing_ok=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prom_vector(prometheus_url: str, query: str) -> dict[tuple[str, str], float]:
    """``{(namespace, service): value}`` of an instant vector query."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
    response.raise_for_status()
    found: dict[tuple[str, str], float] = {}
    for item in response.json()["data"]["result"]:
        labels = item["metric"]
        found[(labels.get("namespace", ""), labels.get("service", ""))] = float(item["value"][1])
    return found


def alternation(names: Sequence[str]) -> str:
    """A PromQL regex matching exactly ``names`` (DNS labels: no regex metacharacters but ``-``,
    which needs no escape outside a character class)."""
    bad = [n for n in names if not DNS_LABEL.match(n)]
    if bad:
        raise ValueError(f"not DNS labels, cannot go into a regex unescaped: {bad[:3]}")
    return "|".join(names)


def error_rate_query(namespaces: Sequence[str], services: Sequence[str], window_s: int) -> str:
    """The built-in error-rate template's query, for several Services at once (by service)."""
    ns, svc = alternation(namespaces), alternation(services)
    sel = f'namespace=~"{ns}",service=~"{svc}"'
    by = "sum by (namespace, service)"
    return (
        f'{by} (rate(model_requests_total{{{sel},code=~"5.."}}[{window_s}s]))'
        f" / {by} (rate(model_requests_total{{{sel}}}[{window_s}s]))"
    )


class ProbedOperator(OperatorProcess):
    """The operator under :mod:`bench.memprobe` (tracemalloc; SIGUSR1 writes ``output``)."""

    def __init__(self, *args: Any, output: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.output = output
        self.env = {**self.env, "PYTHONPATH": str(REPO)}

    def argv(self) -> list[str]:
        args = super().argv()
        i = args.index("modelrollout.cli.operator")
        return [*args[:i], "bench.memprobe", str(self.output), "--", *args[i + 1 :]]

    def dump(self, suffix: str) -> Path:
        """Ask for a report and keep it as ``<output stem>-<suffix>.txt``."""
        assert self.proc is not None
        self.output.unlink(missing_ok=True)
        os.kill(self.proc.pid, signal.SIGUSR1)
        wait_for("the memory report", lambda: self.output.exists(), timeout=300)
        kept = self.output.with_name(f"{self.output.stem}-{suffix}.txt")
        self.output.replace(kept)
        return kept


# ------------------------------------------------------------------------------ one round


@dataclass
class Rollout:
    namespace: str
    name: str
    breach: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def stable(self) -> str:
        return f"{self.name}-a"

    @property
    def candidate(self) -> str:
        return f"{self.name}-b"


@dataclass
class Breach:
    flipped: float | None = None
    visible: float | None = None


@dataclass
class Round:
    """One size: set up, measure, tear down. :meth:`run` returns the figures."""

    lab: Lab
    n: int
    cfg: Config
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        k = self.cfg.namespace_count(self.n)
        self.namespaces = [f"bench-{self.n}-{self.run_id}-{i}" for i in range(k)]
        every = (
            max(1, round(self.n / self.cfg.breaches(self.n))) if self.cfg.breaches(self.n) else 0
        )
        self.rollouts = [
            Rollout(
                self.namespaces[i % k], f"m{i:04d}", breach=bool(every) and i % every == every // 2
            )
            for i in range(self.n)
        ]
        self.api = self.lab.api_client()
        self.api.configuration.connection_pool_maxsize = self.cfg.workers * 2
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.breach: dict[tuple[str, str], Breach] = {
            r.key: Breach() for r in self.rollouts if r.breach
        }

    # -- manifests

    def manifest(self, rollout: Rollout, version: str) -> dict[str, Any]:
        cfg = self.cfg
        body = rollout_manifest(
            rollout.name,
            version,
            stages=cfg.stages(),
            metrics=[{"name": "error-rate", "template": "error-rate", "max": cfg.threshold}],
            interval=f"{cfg.interval_s}s",
            extra_spec={"progressDeadline": "15m"},
        )
        body["metadata"]["labels"] = {RUN_LABEL: self.run_id}
        body["spec"]["template"]["metadata"] = {"annotations": {NO_PROCESS: "true"}}
        return body

    def route(self, rollout: Rollout) -> dict[str, Any]:
        body = httproute(rollout.name)
        body["metadata"]["labels"] = {RUN_LABEL: self.run_id}
        body["spec"]["rules"] = body["spec"]["rules"][:1]  # only the managed rule
        return body

    # -- the round

    def run(self) -> dict[str, Any]:
        cfg, n = self.cfg, self.n
        log.info(
            "round N=%d (%s): %d namespace(s), %d breach(es)",
            n,
            self.run_id,
            len(self.namespaces),
            len(self.breach),
        )
        exporter = Exporter(self.lab, self.run_id)
        recorder = Recorder(self.api, f"{RUN_LABEL}={self.run_id}")
        operator: OperatorProcess | None = None
        sampler: ProcSampler | None = None
        try:
            release_stuck(self.core, self.custom)
            for ns in self.namespaces:
                self.lab.create_namespace(ns, labels={RUN_LABEL: self.run_id})
            exporter.start()
            services = [(r.namespace, s) for r in self.rollouts for s in (r.stable, r.candidate)]
            exporter.set(services, cfg.rps, 0.0)
            recorder.start()
            kind: Any = OperatorProcess
            if cfg.memory_profile:
                report = cfg.out_dir / "profiles" / f"memory-{n}.txt"
                report.parent.mkdir(parents=True, exist_ok=True)
                kind = functools.partial(ProbedOperator, output=report)
            operator = kind(
                self.lab,
                self.namespaces,
                extra_args=["--log-level", "info", *cfg.operator_args],
                env=dict(cfg.operator_env),
            )
            operator.start()  # assigned first: the teardown stops it even if it never got healthy
            assert operator.proc is not None
            pid = operator.proc.pid
            sampler = ProcSampler(pid).start()

            started = time.monotonic()
            _parallel(self._create_route, self.rollouts, cfg.workers)
            _parallel(lambda r: self._apply(r, V1), self.rollouts, cfg.workers)
            self._wait_all(
                recorder,
                lambda s: s.get("phase") == "Succeeded" and s.get("stableVersion") == V1,
                "every first version to be Succeeded",
                cfg.settle_timeout(n),
            )
            init_s = time.monotonic() - started
            if isinstance(operator, ProbedOperator):
                log.info("memory report after init: %s", operator.dump("init"))
            self._wait_series(n)
            rss_after_init = sampler.peak_mib

            # ---- the measured window
            profiler = (
                PySpy(pid, cfg.out_dir / "profiles" / f"profile-{n}.raw") if cfg.profile else None
            )
            before = self._snapshot(operator, pid)
            events_before = self._event_uids()
            if profiler:
                profiler.start()
            t0 = time.time()
            _parallel(lambda r: self._apply(r, V2), self.rollouts, cfg.workers)
            self._drive(recorder, exporter)
            t1 = time.time()
            if profiler:
                self._write_profile(profiler.stop(), n)
            if isinstance(operator, ProbedOperator):
                log.info("memory report of N=%d: %s", n, operator.dump("end"))
            after = self._snapshot(operator, pid)
            sampler.stop()
            events = len(self._event_uids() - events_before)
            result = self._figures(recorder, before, after, t0, t1, events)
            result.update(
                init_s=round(init_s, 1),
                operator_rss_mib_after_init=round(rss_after_init, 1),
                operator_rss_mib_peak=round(sampler.peak_mib, 1),
            )
            return result
        finally:
            if sampler is not None:
                sampler.stop()
            exporter.stop()
            self._teardown(operator)
            recorder.stop()

    def _create_route(self, rollout: Rollout) -> None:
        self.custom.create_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", rollout.namespace, "httproutes", self.route(rollout)
        )

    def _apply(self, rollout: Rollout, version: str) -> None:
        body = self.manifest(rollout, version)
        if version == V1:
            self.custom.create_namespaced_custom_object(
                "modelrollout.dev", "v1alpha1", rollout.namespace, "modelrollouts", body
            )
            return
        self.custom.patch_namespaced_custom_object(
            "modelrollout.dev",
            "v1alpha1",
            rollout.namespace,
            "modelrollouts",
            rollout.name,
            {"spec": {"model": body["spec"]["model"]}},
            _content_type="application/merge-patch+json",
        )

    def _wait_all(
        self, recorder: Recorder, done: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> None:
        def pending() -> list[str]:
            return [
                f"{r.namespace}/{r.name}"
                for r in self.rollouts
                if not done(recorder.status(r.namespace, r.name))
            ]

        def finished() -> bool:
            return not pending()

        try:
            wait_for(what, finished, timeout=timeout, interval=0.5)
        except AssertionError as exc:
            left = pending()
            example = recorder.status(*left[0].split("/")) if left else {}
            raise AssertionError(
                f"{exc}\n{len(left)} of {self.n} not there, e.g. {left[:5]}; status of the first: "
                f"{json.dumps({k: example.get(k) for k in ('phase', 'message', 'stage')})}"
            ) from None

    def _wait_series(self, n: int) -> None:
        """Prometheus scrapes every Service's series before the window opens."""
        query = f'count(model_requests_total{{namespace=~"{alternation(self.namespaces)}"}})'

        def scraped() -> bool:
            found = prom_vector(self.lab.prometheus_url, query)
            return bool(found) and next(iter(found.values())) >= 4 * n

        wait_for("Prometheus to scrape the bench exporter", scraped, timeout=60)

    def _drive(self, recorder: Recorder, exporter: Exporter) -> None:
        """Flip the chosen candidates to errors when their first stage is ready; watch Prometheus
        for the breach to show; return when every rollout is terminal."""
        cfg = self.cfg
        by_key = {r.key: r for r in self.rollouts}
        deadline = time.monotonic() + cfg.settle_timeout(self.n)
        while True:
            flip = [
                key
                for key, b in self.breach.items()
                if b.flipped is None
                and ((recorder.status(*key).get("stage") or {}).get("readyAt"))
                and recorder.status(*key).get("candidateVersion") == V2
            ]
            if flip:
                exporter.set([(k[0], by_key[k].candidate) for k in flip], cfg.rps, cfg.error_rate)
                now = time.time()
                for key in flip:
                    self.breach[key].flipped = now
            pending = [k for k, b in self.breach.items() if b.flipped and b.visible is None]
            if pending:
                query = error_rate_query(
                    self.namespaces, [by_key[k].candidate for k in pending], cfg.interval_s
                )
                values = prom_vector(self.lab.prometheus_url, query)
                answered = time.time()
                for key in pending:
                    if values.get((key[0], by_key[key].candidate), 0.0) > cfg.threshold:
                        self.breach[key].visible = answered
            if all(self._terminal(recorder.status(*r.key)) for r in self.rollouts):
                return
            if time.monotonic() > deadline:
                self._wait_all(recorder, self._terminal, "every rollout to finish", 0)
            time.sleep(0.2)  # the poll period of this loop (Prometheus answers take as long)

    @staticmethod
    def _terminal(status: dict[str, Any]) -> bool:
        phase = status.get("phase")
        if phase == "Succeeded":
            return status.get("stableVersion") == V2
        return phase in TERMINAL

    def _snapshot(self, operator: OperatorProcess, pid: int) -> dict[str, Any]:
        return {
            "apiserver": apiserver_samples(
                self.lab.apiserver_url, self.lab.admin_token, self.lab.ca_file
            ),
            "operator": scrape(operator.metrics_url),
            "prometheus": scrape(f"{self.lab.prometheus_url}/metrics"),
            "cpu": cpu_seconds(pid) or 0.0,
            "components": self._component_cpu(),
        }

    def _component_cpu(self) -> dict[str, float]:
        """CPU seconds so far of each lab process, and of this benchmark process itself."""
        found = {"bench": sum(os.times()[:2])}
        for name, record in self.lab.state.components.items():
            if record.pid is not None and (cpu := cpu_seconds(record.pid)) is not None:
                found[name] = cpu
        return found

    def _event_uids(self) -> set[str]:
        uids: set[str] = set()
        for ns in self.namespaces:
            events = self.core.list_namespaced_event(
                ns, field_selector="involvedObject.kind=ModelRollout"
            )
            uids |= {e.metadata.uid for e in events.items}
        return uids

    def _write_profile(self, raw: Path, n: int) -> None:
        try:
            text = raw.read_text()
        except OSError as exc:
            log.warning("no profile: %s", exc)
            return
        summary = raw.with_name(f"profile-{n}-summary.txt")
        summary.write_text(summarise(text))
        log.info("profile of N=%d: %s", n, summary)

    # -- figures

    def _figures(
        self,
        recorder: Recorder,
        before: dict[str, Any],
        after: dict[str, Any],
        t0: float,
        t1: float,
        events: int,
    ) -> dict[str, Any]:
        cfg, n = self.cfg, self.n
        plan = cfg.plan()
        lags: list[float] = []
        route_lags: list[float] = []
        rollbacks: list[float] = []
        detections: list[float] = []
        changes = 0
        analysed = 0.0
        outcome: Counter[str] = Counter()
        for r in self.rollouts:
            status = recorder.status(r.namespace, r.name)
            history = status.get("history") or []
            phase = status.get("phase") or "?"
            outcome[phase if self._terminal(status) else "unfinished"] += 1
            if r.breach and phase != "RolledBack":
                outcome["missed_breaches"] += 1
            if not r.breach and phase == "RolledBack":
                outcome["false_rollbacks"] += 1
            changes += measure.stage_changes(history)
            analysed += measure.analysed_seconds(history, t1)
            route_log = recorder.route_log(r.namespace, r.name)
            wanted = measure.expected_routes(plan, r.stable, r.candidate)
            for tr in measure.transitions(f"{r.namespace}/{r.name}", history, plan, cfg.interval_s):
                lags.append(tr.lag_s)
                seen = measure.first_seen(route_log, wanted[tr.to], after=t0)
                if seen is not None:
                    route_lags.append(seen - tr.due)
            b = self.breach.get(r.key)
            if b is not None and b.flipped is not None and b.visible is not None:
                back = measure.first_seen(route_log, {r.stable: 100}, after=b.flipped)
                if back is not None:
                    rollbacks.append(back - b.visible)
                rolled = [
                    e for e in measure.current_rollout(history) if e.get("event") == "RolledBack"
                ]
                if rolled:
                    detections.append(measure.epoch(rolled[0]["time"]) - b.visible)

        window = t1 - t0
        bench_own = Counter({ROLLOUT_PATCH: n})
        written = measure.operator_writes(
            writes(before["apiserver"]), writes(after["apiserver"]), bench_own, events
        )
        # What a stage change costs: the status write that records it, the route, and at the
        # start and end of a rollout the candidate's Deployment and Service. Not counted here
        # (reported apart): status writes of analysis runs in mid-stage, Events, and kopf's
        # own annotation on each spec change.
        status_by_cause = recorder.status_writes_between(t0, time.time())
        status_and_route_writes = status_by_cause.get("stage", 0) + written.get("routes", 0)
        stage_writes = status_and_route_writes + sum(
            written.get(kind, 0) for kind in ("deployments", "services")
        )

        def per_change(count: int) -> float | None:
            return round(count / changes, 2) if changes else None

        api_before, api_after = before["apiserver"], after["apiserver"]
        latency = {
            verb: mean_between(
                api_before, api_after, "apiserver_request_duration_seconds", verb=verb
            )
            for verb in ("GET", "PATCH")
        }
        prom_latency = mean_between(
            before["operator"], after["operator"], "modelrollout_prometheus_query_duration_seconds"
        )
        op_before, op_after = before["operator"], after["operator"]
        queries = total(op_after, "modelrollout_prometheus_query_duration_seconds_count") - total(
            op_before, "modelrollout_prometheus_query_duration_seconds_count"
        )
        reconciles = total(op_after, "modelrollout_reconcile_duration_seconds_count") - total(
            op_before, "modelrollout_reconcile_duration_seconds_count"
        )
        reconcile_s = total(op_after, "modelrollout_reconcile_duration_seconds_sum") - total(
            op_before, "modelrollout_reconcile_duration_seconds_sum"
        )
        by_trigger = {
            dict(labels)["trigger"]: int(value - op_before.get((name, labels), 0.0))
            for (name, labels), value in sorted(op_after.items())
            if name == "modelrollout_reconciles_total"
        }
        deferred = total(op_after, "modelrollout_reconciles_deferred_total") - total(
            op_before, "modelrollout_reconciles_deferred_total"
        )
        queue = "modelrollout_reconcile_queue_seconds"
        prom_api = total(
            after["prometheus"], "prometheus_http_requests_total", handler="/api/v1/query"
        ) - total(before["prometheus"], "prometheus_http_requests_total", handler="/api/v1/query")
        cpu = after["cpu"] - before["cpu"]
        others = {
            name: round((after["components"][name] - spent) / window, 3)
            for name, spent in before["components"].items()
            if name in after["components"]
        }
        p_lag, p_route = measure.percentiles(lags), measure.percentiles(route_lags)
        p_back, p_detect = measure.percentiles(rollbacks), measure.percentiles(detections)
        intervals = analysed / cfg.interval_s
        return {
            "rollouts": n,
            "namespaces": len(self.namespaces),
            "breaches": len(self.breach),
            "outcome": dict(sorted(outcome.items())),
            "window_s": round(window, 1),
            "transitions": len(lags),
            "transition_lag_p50_s": p_lag[50],
            "transition_lag_p99_s": p_lag[99],
            "transition_lag_max_s": round(max(lags), 3) if lags else None,
            "route_lag_p50_s": p_route[50],
            "route_lag_p99_s": p_route[99],
            "breach_to_rollback_p50_s": p_back[50],
            "breach_to_rollback_p99_s": p_back[99],
            "breach_to_rollback_max_s": round(max(rollbacks), 3) if rollbacks else None,
            "breach_to_rollback_measured": len(rollbacks),
            "breach_to_decision_p50_s": p_detect[50],
            "breach_to_decision_p99_s": p_detect[99],
            "operator_cpu_seconds": round(cpu, 2),
            "operator_cpu_seconds_per_rollout_hour": round(cpu / (n * window / 3600), 2),
            "operator_cpu_share_of_one_core": round(cpu / window, 3),
            "lab_cpu_share_of_one_core": others,
            "machine_load_average": [round(x, 2) for x in os.getloadavg()],
            "stage_changes": changes,
            "apiserver_writes": written,
            "status_writes_by_cause": status_by_cause,
            "apiserver_writes_per_rollout_stage": per_change(stage_writes),
            "apiserver_status_and_route_writes_per_rollout_stage": per_change(
                status_and_route_writes
            ),
            "apiserver_writes_all_per_rollout_stage": per_change(written["total"]),
            "apiserver_status_writes_per_rollout_stage": per_change(
                written.get("rollout status", 0)
            ),
            "status_writes_per_analysis_run": round(status_by_cause.get("analysis", 0) / queries, 3)
            if queries
            else None,
            "prometheus_queries": int(queries),
            "prometheus_queries_per_rollout_interval": round(queries / intervals, 3)
            if intervals
            else None,
            "prometheus_api_queries_total": int(prom_api),
            "reconciles": int(reconciles),
            "reconciles_per_rollout_minute": round(reconciles / n / (window / 60), 2),
            "reconcile_mean_ms": round(1000 * reconcile_s / reconciles, 2) if reconciles else None,
            "reconciles_by_trigger": by_trigger,
            "reconciles_deferred": int(deferred),
            "reconcile_queue_mean_s": _round(mean_between(op_before, op_after, queue)),
            "reconcile_queue_p99_s": _round(quantile_between(op_before, op_after, queue, 0.99)),
            "apiserver_gets_by_resource": reads_between(api_before, api_after),
            "apiserver_get_mean_ms": _ms(latency["GET"]),
            "apiserver_patch_mean_ms": _ms(latency["PATCH"]),
            "prometheus_query_mean_ms": _ms(prom_latency),
            "analysis_interval_s": cfg.interval_s,
            "stage_duration_s": cfg.stage_s,
        }

    # -- teardown

    def _teardown(self, operator: OperatorProcess | None) -> None:
        """Delete the namespaces while the operator still runs (it removes its finalizers) and
        wait until they are gone; if they are not, drop the finalizers ourselves. Then stop the
        operator."""
        try:
            delete_namespaces(self.core, self.custom, f"{RUN_LABEL}={self.run_id}", self.n)
        finally:
            if operator is not None:
                operator.stop()
            self.api.close()


def release_stuck(core: k8s.CoreV1Api, custom: k8s.CustomObjectsApi, after_s: float = 120) -> None:
    """Bench namespaces of an interrupted run, Terminating for a while because no operator
    removes its finalizers any more: release them (never touches a namespace still in use)."""
    now = datetime.now(UTC)
    for ns in core.list_namespace(label_selector=RUN_LABEL).items:
        since = ns.metadata.deletion_timestamp
        if since is not None and (now - since).total_seconds() > after_s:
            log.info("releasing the finalizers of %s (left over, Terminating)", ns.metadata.name)
            release_rollouts(custom.api_client, ns.metadata.name)


def delete_namespaces(
    core: k8s.CoreV1Api, custom: k8s.CustomObjectsApi, selector: str, n: int
) -> None:
    """Delete the bench namespaces matching ``selector`` and wait until they are gone; after
    a while, release the finalizers of rollouts no operator handles any more."""

    def left() -> list[str]:
        return [ns.metadata.name for ns in core.list_namespace(label_selector=selector).items]

    for ns in left():
        try:
            core.delete_namespace(ns)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("deleting namespace %s: %s", ns, exc.reason)
    try:
        wait_for("the bench namespaces to be deleted", lambda: not left(), timeout=60 + n * 0.3)
        return
    except AssertionError as exc:
        log.warning("%s; releasing the rollouts' finalizers", exc)
    for ns in left():
        release_rollouts(custom.api_client, ns)
    try:
        wait_for("the bench namespaces to be deleted", lambda: not left(), timeout=60 + n * 0.3)
    except AssertionError as exc:
        log.warning("%s (going on)", exc)


# ------------------------------------------------------------------------------ output


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdicts(cfg: Config, result: dict[str, Any]) -> dict[str, bool | None]:
    found: dict[str, bool | None] = {}
    for target in targets(cfg):
        value = result.get(target.field)
        found[target.name] = None if value is None else bool(value <= target.limit)
    return found


def markdown(cfg: Config, results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results ({meta['generated_at']})",
        "",
        f"{meta['machine']['cpus']} CPUs, Python {meta['machine']['python']}, lab: {meta['lab']}; "
        f"stages canary-10 / canary-50 of {cfg.stage_s}s then full, error-rate check every "
        f"{cfg.interval_s}s, {cfg.breach_fraction:.0%} of the rollouts breached at "
        f"{cfg.error_rate:.0%} errors.",
        "",
        "| rollouts | transition lag p50 / p99 (s) | route lag p50 / p99 (s) "
        "| breach → rollback p50 / p99 (s) | peak RSS (MiB) | CPU s per rollout-hour "
        "| writes per stage change: status + route / with Deployments, Services (all writes) "
        "| Prometheus queries per rollout-interval "
        "| outcome |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        outcome = ", ".join(f"{k} {v}" for k, v in r["outcome"].items())
        lines.append(
            f"| {r['rollouts']} "
            f"| {_fmt(r['transition_lag_p50_s'])} / {_fmt(r['transition_lag_p99_s'])} "
            f"| {_fmt(r['route_lag_p50_s'])} / {_fmt(r['route_lag_p99_s'])} "
            f"| {_fmt(r['breach_to_rollback_p50_s'])} / {_fmt(r['breach_to_rollback_p99_s'])} "
            f"| {_fmt(r['operator_rss_mib_peak'], 0)} "
            f"| {_fmt(r['operator_cpu_seconds_per_rollout_hour'], 1)} "
            f"| {_fmt(r.get('apiserver_status_and_route_writes_per_rollout_stage'))} / "
            f"{_fmt(r['apiserver_writes_per_rollout_stage'])} "
            f"({_fmt(r.get('apiserver_writes_all_per_rollout_stage'))}) "
            f"| {_fmt(r['prometheus_queries_per_rollout_interval'])} | {outcome} |"
        )
    lines += [
        "",
        "Writes per stage change: the status write that records it and the route write; then "
        "the same with the candidate's Deployment and Service writes at a rollout's start and "
        "end. In brackets, all the "
        "operator's writes: also the status writes of analysis runs inside a stage, its Events "
        "and kopf's annotation on each spec change (breakdown in latest.json).",
    ]
    lines += ["", "Targets (issue 11):", ""]
    for target in targets(cfg):
        marks = []
        for r in results:
            ok = verdicts(cfg, r)[target.name]
            marks.append(
                f"N={r['rollouts']}: {'met' if ok else 'MISSED' if ok is False else 'n/a'}"
            )
        lines.append(f"- {target.name} <= {target.limit:g}{target.unit}: {', '.join(marks)}")
    return "\n".join(lines) + "\n"


def write_results(cfg: Config, results: list[dict[str, Any]], lab_name: str) -> tuple[Path, Path]:
    meta = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "lab": lab_name,
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    for r in results:
        r["targets"] = verdicts(cfg, r)
    doc = {**meta, "config": config, "results": results}
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = cfg.out_dir / "latest.json", cfg.out_dir / "latest.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(markdown(cfg, results, meta))
    return json_path, md_path


# ------------------------------------------------------------------------------ CLI


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes wants comma-separated positive integers (e.g. 100,300,1000), got {text!r}"
        ) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes wants positive integers, got {text!r}")
    return sizes


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--operator-env wants KEY=VALUE, got {text!r}")
    return key, value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"--breach-fraction must be within 0..1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=(100, 1000),
        help="rollout counts, one round each (default 100,1000)",
    )
    p.add_argument(
        "--lab",
        choices=("own", "shared"),
        default="own",
        help="own: a separate lab in --lab-dir (default); shared: the repository's lab",
    )
    p.add_argument(
        "--lab-dir",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"where the own lab lives (default {DEFAULT_ROOT})",
    )
    p.add_argument("--keep-lab", action="store_true", help="leave the own lab running afterwards")
    p.add_argument(
        "--interval", type=int, default=5, help="analysis interval in seconds (default 5)"
    )
    p.add_argument(
        "--stage-duration",
        type=int,
        default=10,
        help="canary stage duration in seconds (default 10)",
    )
    p.add_argument(
        "--breach-fraction",
        type=_fraction,
        default=0.1,
        help="share of rollouts made to breach (default 0.1)",
    )
    p.add_argument(
        "--namespaces",
        type=int,
        default=None,
        help="namespaces per round (default: one per 50 rollouts, 1-4)",
    )
    p.add_argument(
        "--profile", action="store_true", help="py-spy profile of the operator during each window"
    )
    p.add_argument(
        "--memory-profile",
        action="store_true",
        help="run the operator under tracemalloc (bench.memprobe) and report its allocations "
        "at the end of each window (slows the operator: not for the timing figures)",
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for each phase (default 240 + 0.6 N)",
    )
    p.add_argument(
        "--operator-env",
        type=_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable of the operator process (repeatable)",
    )
    p.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="extra argument for modelrollout run (repeatable; --operator-arg=--no-watch-cache)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, CI timeouts) unwinds like Ctrl-C: the finally blocks stop the operator
    # and the exporter and delete the namespaces, instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(
        level=logging.INFO, format="bench %(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "e2e.lab", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = Config(
        sizes=args.sizes,
        interval_s=args.interval,
        stage_s=args.stage_duration,
        breach_fraction=args.breach_fraction,
        namespaces=args.namespaces,
        profile=args.profile,
        memory_profile=args.memory_profile,
        out_dir=args.out,
        settle_timeout_s=args.timeout,
        operator_args=tuple(args.operator_arg),
        operator_env=tuple(args.operator_env),
    )
    own = args.lab == "own"
    lab = bench_lab(args.lab_dir) if own else Lab()
    log.info("bringing up the %s lab (%s)", "bench's own" if own else "shared", lab.paths.dir)
    lab.up()
    results: list[dict[str, Any]] = []
    try:
        install_crd(lab)
        for n in cfg.sizes:
            result = Round(lab, n, cfg).run()
            results.append(result)
            log.info(
                "N=%d: %s",
                n,
                json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}),
            )
            write_results(cfg, results, "own" if own else "shared")
    finally:
        if own and not args.keep_lab:
            log.info("stopping the bench lab")
            lab.down()
    json_path, md_path = write_results(cfg, results, "own" if own else "shared")
    print(md_path.read_text())
    print(f"results: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
