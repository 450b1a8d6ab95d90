"""Logging and operator metrics.

Logging: :func:`configure_logging` routes structlog *and* the standard library (kopf logs
through ``logging``) through one :class:`structlog.stdlib.ProcessorFormatter`, so every line
has the same format: JSON in production, a console layout for people at a terminal. A
redaction processor runs last before rendering and replaces secret values with
``[REDACTED]``: any field whose key names a credential (token, password, secret,
authorization, bearer, api_key) and every value registered with :func:`register_secret`, also
inside strings (messages, formatted exceptions, nested dicts and lists).

Metrics: :class:`OperatorMetrics` owns a private :class:`~prometheus_client.CollectorRegistry`;
the module-level :data:`METRICS` is the operator's instance and the helpers below
(``observe_phase``, ``forget``) act on it. :func:`start_metrics_server` serves ``/metrics`` and
``/healthz`` from a daemon thread.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelrollout.api.models import Phase

REDACTED = "[REDACTED]"

LogFormat = Literal["json", "console", "auto"]

# ----------------------------------------------------------------------------- redaction

_SENSITIVE_KEY = re.compile(
    r"token|passw(or)?d|secret|authori[sz]ation|bearer|api[-_]?key|credential", re.IGNORECASE
)
# Keys that *name* a credential rather than hold one (``secretName``, ``token_ref``) stay
# readable, so "Secret prom-creds not found" is still a useful line.
_NAMING_SUFFIX = re.compile(r"(name|ref)$", re.IGNORECASE)

# Values shorter than this are not registered: replacing every "ab" in every line would make
# the logs unreadable, and such a value protects nothing anyway.
MIN_SECRET_LENGTH = 4


class _SecretRegistry:
    """The set of secret values to scrub, compiled into one alternation regex.

    Registration takes a lock and swaps in a new pattern; readers use whatever pattern is
    current without locking (a reference assignment is atomic).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        candidates = {value, value.strip()}
        # A Secret holding a JSON object of headers: scrub each value on its own too.
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            candidates.update(v for v in parsed.values() if isinstance(v, str))
        new = {c for c in candidates if len(c) >= MIN_SECRET_LENGTH}
        with self._lock:
            if new <= self._values:
                return
            self._values |= new
            ordered = sorted(self._values, key=len, reverse=True)  # longest match first
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(REDACTED, text)


_SECRETS = _SecretRegistry()


def register_secret(value: str | bytes) -> None:
    """Never log ``value``: every occurrence, also inside longer strings, becomes ``[REDACTED]``.

    The operator calls this for every Secret value it reads. A JSON object (a headers Secret)
    also registers each of its values. Values shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    _SECRETS.add(value)


def clear_secrets() -> None:
    """Forget every registered value (tests)."""
    _SECRETS.clear()


def is_sensitive_key(key: str) -> bool:
    """True when a field named ``key`` holds a credential and must be redacted."""
    return bool(_SENSITIVE_KEY.search(key)) and not _NAMING_SUFFIX.search(key)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRETS.scrub(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_sensitive_key(k) else _redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else would be rendered with repr()/str(): scrub that text.
    return _SECRETS.scrub(str(value))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace credential fields and registered secret values."""
    for key in list(event_dict):
        if key.startswith("_"):  # _record, _from_structlog: internal, removed before rendering
            continue
        if is_sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


# ----------------------------------------------------------------------------- logging

_HANDLER_NAME = "modelrollout"


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(
            f"unknown log level {level!r}; use one of debug, info, warning, error, critical"
        )
    return number


def _tidy_foreign(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Fields of stdlib records in structlog's terms.

    ``message``/``asctime`` are set on a record by any other formatter that saw it first (they
    duplicate ``event``/``timestamp``). kopf's per-object loggers pass ``extra={"k8s_ref":
    {...}, "k8s_skip": ...}``: the reference becomes the same ``namespace``/``rollout``
    fields that :func:`bind_rollout` adds.
    """
    for duplicate in (
        "message",
        "asctime",
        "k8s_skip",
        "settings",
    ):  # settings: kopf dumps its config
        event_dict.pop(duplicate, None)
    ref = event_dict.pop("k8s_ref", None)
    if isinstance(ref, Mapping):
        if ref.get("namespace"):
            event_dict.setdefault("namespace", ref["namespace"])
        if ref.get("name"):
            event_dict.setdefault("rollout", ref["name"])
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _leading_keys_first(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """JSON lines read better with time, level, logger and message first."""
    ordered = {k: event_dict.pop(k) for k in _LEADING_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _renderers(fmt: LogFormat, stream: Any) -> list[Any]:
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if fmt == "auto":
        fmt = "console" if tty else "json"
    if fmt == "json":
        return [_leading_keys_first, structlog.processors.JSONRenderer(sort_keys=False)]
    if fmt == "console":
        return [
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    raise ValueError(f"unknown log format {fmt!r}; use json, console or auto")


def configure_logging(
    level: str | int = "info", fmt: LogFormat = "auto", *, stream: Any = None
) -> None:
    """Send structlog and stdlib logging (kopf, httpx, ...) to ``stream`` (stderr) in one format.

    ``fmt``: ``json`` (one object per line), ``console`` (aligned key=value), or ``auto``
    (console when the stream is a terminal, else JSON). Safe to call again: the previous handler
    installed here is replaced, handlers installed by others are left alone.
    """
    number = _level_number(level)
    stream = stream if stream is not None else sys.stderr
    renderers = _renderers(fmt, stream)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.ExtraAdder(),
            _tidy_foreign,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Exceptions become text *before* redaction so their messages are scrubbed too.
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            *renderers,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    # httpx logs every request line with its full URL at INFO; webhook URLs carry secrets in
    # their path or query (Slack: /services/T/B/<secret>), so these stay at WARNING.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(number, logging.WARNING))


def get_logger(name: str = "modelrollout") -> Any:
    """A structlog logger; fields bound with ``.bind()`` appear on every line."""
    return structlog.get_logger(name)


def bind_rollout(
    logger: Any,
    namespace: str,
    rollout: str,
    version: str | None = None,
    stage: str | None = None,
) -> Any:
    """``logger`` with the rollout's identity bound (version and stage when known)."""
    fields: dict[str, str] = {"namespace": namespace, "rollout": rollout}
    if version is not None:
        fields["version"] = version
    if stage is not None:
        fields["stage"] = stage
    return logger.bind(**fields)


# ----------------------------------------------------------------------------- metrics

# Rollback reasons label a counter: keep them a small closed set (CamelCase codes such as
# AnalysisFailed, ProgressDeadlineExceeded, Aborted); free text would explode the series.
_REASON_CODE = re.compile(r"^[A-Z][A-Za-z0-9]{0,62}$")
OTHER_REASON = "Other"


class _PhaseCollector(Collector):
    """``modelrollout_rollouts{phase}``: how many rollouts are in each phase right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            tally = _Tally(self._phases.values())
        family = GaugeMetricFamily(
            "modelrollout_rollouts", "ModelRollouts by phase.", labels=["phase"]
        )
        for phase in Phase:
            family.add_metric([phase.value], tally.pop(phase.value, 0))
        for other, count in sorted(tally.items()):  # a phase unknown to this version
            family.add_metric([other], count)
        yield family


class OperatorMetrics:
    """The operator's own metrics, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._phases = _PhaseCollector()
        self.registry.register(self._phases)
        self.stage_transitions = Counter(
            "modelrollout_stage_transitions",
            "Stage transitions, by the stage entered.",
            ["namespace", "rollout", "to"],
            registry=self.registry,
        )
        self.analysis_verdicts = Counter(
            "modelrollout_analysis_verdicts",
            "Analysis results, by metric check and verdict.",
            ["metric", "verdict"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "modelrollout_rollbacks",
            "Rollbacks, by reason code.",
            ["namespace", "rollout", "reason"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "modelrollout_reconcile_duration_seconds",
            "Time spent in one reconcile of a ModelRollout.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.reconciles = Counter(
            "modelrollout_reconciles",
            "Reconciles started, by what triggered them (start, due, change, workload, "
            "caught-up, retry).",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_queue = Histogram(
            "modelrollout_reconcile_queue_seconds",
            "Time a due reconcile waited for one of the --max-concurrent-reconciles slots.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.reconciles_deferred = Counter(
            "modelrollout_reconciles_deferred",
            "Reconciles put off because the rollout's body was older than the operator's own "
            "last status write (the watch had not delivered it yet).",
            registry=self.registry,
        )
        self.prometheus_query_duration = Histogram(
            "modelrollout_prometheus_query_duration_seconds",
            "Time spent in one Prometheus query of the analysis.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.prometheus_query_errors = Counter(
            "modelrollout_prometheus_query_errors",
            "Prometheus queries that failed (unreachable, bad query, bad answer).",
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "modelrollout_webhook_requests",
            "Webhook calls by webhook type and final outcome (after retries).",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.undecodable_objects = Counter(
            "modelrollout_undecodable_objects",
            "Object versions left out of a watch or list because they could not be decoded "
            "(nested too deep); each also gets a Warning Event.",
            registry=self.registry,
        )
        self._series_lock = threading.Lock()
        self._series: dict[tuple[str, str], set[tuple[str, tuple[str, ...]]]] = {}

    def _remember(self, namespace: str, name: str, metric: str, labels: tuple[str, ...]) -> None:
        with self._series_lock:
            self._series.setdefault((namespace, name), set()).add((metric, labels))

    # -- per-rollout state

    def observe_phase(self, namespace: str, name: str, phase: str | Phase) -> None:
        self._phases.set(namespace, name, str(phase))

    def forget(self, namespace: str, name: str) -> None:
        """Drop everything about a deleted rollout (its phase and its labelled series)."""
        self._phases.forget(namespace, name)
        with self._series_lock:
            series = self._series.pop((namespace, name), set())
        counters = {"transitions": self.stage_transitions, "rollbacks": self.rollbacks}
        for metric, labels in series:
            with suppress(KeyError):
                counters[metric].remove(*labels)

    # -- events

    def stage_transition(self, namespace: str, name: str, to_stage: str) -> None:
        labels = (namespace, name, to_stage)
        self.stage_transitions.labels(*labels).inc()
        self._remember(namespace, name, "transitions", labels)

    def analysis_verdict(self, metric: str, verdict: str) -> None:
        self.analysis_verdicts.labels(metric, str(verdict)).inc()

    def rollback(self, namespace: str, name: str, reason: str) -> None:
        """Count a rollback under its reason code: ``AnalysisFailed`` or the code that leads
        ``"AnalysisFailed: error-rate 0.05 > 0.01"``; anything else counts as ``Other``."""
        head = reason.split(":", 1)[0].strip()
        code = head if _REASON_CODE.match(head) else OTHER_REASON
        labels = (namespace, name, code)
        self.rollbacks.labels(*labels).inc()
        self._remember(namespace, name, "rollbacks", labels)

    def reconcile_started(self, trigger: str) -> None:
        self.reconciles.labels(str(trigger)).inc()

    def reconcile_deferred(self) -> None:
        self.reconciles_deferred.inc()

    def prometheus_query_error(self) -> None:
        self.prometheus_query_errors.inc()

    def webhook_request(self, webhook_type: str, outcome: str) -> None:
        self.webhook_requests.labels(str(webhook_type), outcome).inc()

    @contextmanager
    def time_reconcile(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile_duration.observe(time.perf_counter() - start)

    @contextmanager
    def time_prometheus_query(self) -> Iterator[None]:
        """Time a query; an exception escaping the block also counts as a query error."""
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.prometheus_query_errors.inc()
            raise
        finally:
            self.prometheus_query_duration.observe(time.perf_counter() - start)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


METRICS = OperatorMetrics()
"""The operator's metrics (one per process)."""


def observe_phase(namespace: str, name: str, phase: str | Phase) -> None:
    """Record the current phase of a rollout (feeds ``modelrollout_rollouts{phase}``)."""
    METRICS.observe_phase(namespace, name, phase)


def forget(namespace: str, name: str) -> None:
    """The rollout is gone: drop its phase and series."""
    METRICS.forget(namespace, name)


# ----------------------------------------------------------------------------- HTTP server


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line."""


@dataclass
class MetricsServer:
    """A running /metrics + /healthz server; ``port`` is the bound port (useful with port 0)."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    port: int,
    host: str = "0.0.0.0",
    *,
    metrics: OperatorMetrics | None = None,
    healthy: Callable[[], bool] | None = None,
    problems: Callable[[], Sequence[str]] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` from a daemon thread.

    Callable from anywhere (a sync kopf startup handler runs in a worker thread). ``healthy``
    (optional) makes ``/healthz`` answer 503 while it returns False; ``problems`` (optional)
    while it returns any, one per line of the answer. Other paths are 404.
    """
    source = metrics if metrics is not None else METRICS
    metrics_app = make_wsgi_app(source.registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            found = list(problems()) if problems is not None else []
            if found or (healthy is not None and not healthy()):
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return ["".join(f"{p}\n" for p in found or ["unhealthy"]).encode()]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    try:
        server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return MetricsServer(server=server, thread=thread, host=host, port=server.server_port)
