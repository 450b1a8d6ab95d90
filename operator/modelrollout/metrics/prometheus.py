"""Prometheus as a :class:`MetricProvider`, on top of prometheus-api-client.

``PrometheusConnect`` is blocking (requests), so every call runs on a small bounded thread pool
shared by all providers: the operator's event loop never waits on the network, and 1,000
rollouts cannot open 1,000 threads. Each query has a client timeout (and passes the same value
to Prometheus as its evaluation ``timeout``); nothing is retried here, since the next analysis
interval is the retry and ``errorLimit`` decides when errors matter.

Outcomes are typed: a number is :class:`Value`; an empty result, NaN or ±Inf is :class:`NoData`
(inconclusive, never a pass); connection refused, timeout, HTTP 4xx/5xx (with Prometheus' own
error text, e.g. a PromQL parse error), a malformed body, or **several series where one is
expected** is :class:`ProviderError`. The last one is an error rather than no data because
it is a mistake in the query (a missing ``sum()``) that waiting will not fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import os
import ssl
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
import structlog
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from modelrollout.api.models import PrometheusSpec, SecretKeyRef, parse_duration
from modelrollout.metrics.base import (
    InstantOutcome,
    NoData,
    ProviderError,
    RangeOutcome,
    Samples,
    Series,
    Value,
    Vector,
    VectorOutcome,
)
from modelrollout.metrics.templates import format_duration

log = structlog.get_logger(__name__)

DEFAULT_WORKERS = 8
"""Threads shared by all providers of a factory (or of the process, for the default pool)."""

QueryKind = Literal["instant", "range", "vector", "online"]
QueryOutcomeKind = Literal["value", "no_data", "error"]


@dataclass(frozen=True)
class QueryEvent:
    """One request to Prometheus, for the operator's own metrics (address has no credentials)."""

    address: str
    kind: QueryKind
    outcome: QueryOutcomeKind
    seconds: float


QueryObserver = Callable[[QueryEvent], None]

_T = TypeVar("_T")

_default_executor: ThreadPoolExecutor | None = None
_default_executor_lock = threading.Lock()


def default_executor() -> ThreadPoolExecutor:
    """The process-wide pool used by providers built without an explicit executor."""
    global _default_executor
    with _default_executor_lock:
        if _default_executor is None:
            _default_executor = ThreadPoolExecutor(
                max_workers=DEFAULT_WORKERS, thread_name_prefix="prometheus"
            )
        return _default_executor


def redact_address(address: str) -> str:
    """The address without any ``user:password@`` part, for logs and messages."""
    parts = urlsplit(address)
    if parts.username is None and parts.password is None:
        return address
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PrometheusHTTPError(Exception):
    """Prometheus (or a proxy in front of it) answered 4xx/5xx."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        kind = body.get("errorType")
        return f"{kind}: {body['error']}" if kind else body["error"]
    text = response.text.strip()
    return (text[:300] + "...") if len(text) > 300 else text or response.reason or "no body"


def _raise_for_http_error(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A requests response hook: keep Prometheus' error text, which PrometheusConnect drops."""
    if response.status_code >= 400:
        raise PrometheusHTTPError(response.status_code, _error_text(response))


class _Malformed(ValueError):
    pass


def _number(sample: Any) -> float:
    """The value of a ``[timestamp, "value"]`` pair."""
    if not isinstance(sample, list | tuple) or len(sample) != 2 or not isinstance(sample[1], str):
        raise _Malformed(f"not a [timestamp, value] pair: {sample!r:.80}")
    try:
        return float(sample[1])
    except ValueError as exc:
        raise _Malformed(f"not a number: {sample[1]!r:.80}") from exc


def _non_finite(value: float) -> NoData:
    if math.isnan(value):
        return NoData("value is NaN (e.g. 0/0: no requests in the interval)")
    return NoData(
        f"value is {'+' if value > 0 else '-'}Inf "
        "(e.g. a quantile beyond the largest histogram bucket, or a division by zero)"
    )


def _is_scalar(result: list[Any]) -> bool:
    return len(result) == 2 and not isinstance(result[0], dict)


def _series_items(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
        raise _Malformed(f"unexpected result: {result!r:.120}")
    return result


def _too_many(result: list[dict[str, Any]]) -> ProviderError:
    labels = [item.get("metric", {}) for item in result[:2]]
    return ProviderError(
        f"query returned {len(result)} series, expected 1; aggregate it (e.g. sum(...)). "
        f"First series: {', '.join(str(lab) for lab in labels)}"
    )


def parse_instant(result: Any) -> InstantOutcome:
    """The ``data.result`` of an instant query, as one number."""
    if isinstance(result, list) and _is_scalar(result):
        value = _number(result)
    else:
        items = _series_items(result)
        if not items:
            return NoData("query returned no series")
        if len(items) > 1:
            return _too_many(items)
        if "value" not in items[0]:
            if "values" in items[0]:
                return ProviderError("query returned a range vector; expected one instant value")
            raise _Malformed(f"series without a value: {items[0]!r:.120}")
        value = _number(items[0]["value"])
    return Value(value) if math.isfinite(value) else _non_finite(value)


def parse_range(result: Any) -> RangeOutcome:
    """The ``data.result`` of a range query, as the finite samples of its one series."""
    items = _series_items(result)
    if not items:
        return NoData("query returned no series in the window")
    if len(items) > 1:
        return _too_many(items)
    raw = items[0].get("values")
    if not isinstance(raw, list):
        raise _Malformed(f"series without values: {items[0]!r:.120}")
    values = [_number(sample) for sample in raw]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return NoData(f"all {len(values)} samples are NaN or infinite")
    return Samples(finite)


def parse_vector(result: Any) -> VectorOutcome:
    """The ``data.result`` of an instant query, as every series with its labels."""
    if isinstance(result, list) and _is_scalar(result):
        return ProviderError("query returned a scalar; expected a vector of series")
    items = _series_items(result)
    if not items:
        return NoData("query returned no series")
    series = []
    for item in items:
        labels = item.get("metric")
        if not isinstance(labels, dict) or "value" not in item:
            raise _Malformed(f"unexpected series: {item!r:.120}")
        series.append(Series({str(k): str(v) for k, v in labels.items()}, _number(item["value"])))
    return Vector(tuple(series))


def _outcome_kind(outcome: object) -> QueryOutcomeKind:
    if isinstance(outcome, ProviderError):
        return "error"
    if isinstance(outcome, NoData):
        return "no_data"
    return "value"


class PrometheusProvider:
    """A :class:`~modelrollout.metrics.base.VectorProvider` backed by one Prometheus server.

    Credentials stay in the HTTP session; they are never logged nor put in messages.
    """

    def __init__(
        self,
        address: str,
        timeout: float,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_pem: str | None = None,
        verify: bool = True,
        *,
        executor: ThreadPoolExecutor | None = None,
        on_query: QueryObserver | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if bearer_token is not None and basic_auth is not None:
            raise ValueError("use either a bearer token or basic auth, not both")
        self.address = address.rstrip("/")
        self.timeout = timeout
        self._display = redact_address(self.address)
        self._executor = executor or default_executor()
        self._on_query = on_query
        self._params = {"timeout": format_duration(timedelta(seconds=timeout))}

        session = requests.Session()
        session.hooks["response"].append(_raise_for_http_error)
        session.verify = verify
        self._ca_cleanup: weakref.finalize[[str], PrometheusProvider] | None = None
        if ca_pem is not None and verify:
            session.verify = self._write_ca(ca_pem)
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
        self._client = PrometheusConnect(
            url=self.address,
            headers=headers,
            disable_ssl=not verify,
            # Fail fast and keep the real cause (a read timeout stays a timeout): no retries.
            retry=Retry(total=0, read=False, raise_on_status=False),
            auth=basic_auth,
            session=session,
            timeout=timeout,
        )

    def _write_ca(self, ca_pem: str) -> str:
        try:
            ssl.create_default_context(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError("the Prometheus CA bundle is not valid PEM") from exc
        fd, path = tempfile.mkstemp(prefix="modelrollout-prometheus-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as handle:
            handle.write(ca_pem)
        self._ca_cleanup = weakref.finalize(self, os.unlink, path)
        return path

    def __repr__(self) -> str:
        return f"PrometheusProvider({self._display!r}, timeout={self.timeout:g})"

    def close(self) -> None:
        """Release the connection pool and the CA file."""
        self._client.close()
        if self._ca_cleanup is not None:
            self._ca_cleanup()

    async def _run(self, kind: QueryKind, call: Callable[[], _T]) -> _T | ProviderError:
        def work() -> tuple[_T | ProviderError, float]:
            started = time.perf_counter()
            try:
                outcome: _T | ProviderError = call()
            except PrometheusHTTPError as exc:
                outcome = ProviderError(f"Prometheus at {self._display} answered {exc}")
            except requests.Timeout:
                outcome = ProviderError(
                    f"Prometheus at {self._display} did not answer within {self.timeout:g}s"
                )
            except requests.ConnectionError as exc:
                cause = exc.args[0] if exc.args else exc
                reason = cause.reason if isinstance(cause, MaxRetryError) else cause
                outcome = ProviderError(f"cannot reach Prometheus at {self._display}: {reason}")
            except requests.JSONDecodeError as exc:  # before RequestException, its base
                outcome = ProviderError(
                    f"malformed response from Prometheus at {self._display}: not JSON ({exc})"
                )
            except requests.RequestException as exc:
                outcome = ProviderError(f"request to Prometheus at {self._display} failed: {exc}")
            except PrometheusApiClientException as exc:
                outcome = ProviderError(f"Prometheus at {self._display}: {exc}")
            except (ValueError, KeyError, TypeError) as exc:  # a body that is not Prometheus JSON
                outcome = ProviderError(
                    f"malformed response from Prometheus at {self._display}: {exc!s:.200}"
                )
            return outcome, time.perf_counter() - started

        loop = asyncio.get_running_loop()
        outcome, seconds = await loop.run_in_executor(self._executor, work)
        if self._on_query is not None:
            event = QueryEvent(self._display, kind, _outcome_kind(outcome), seconds)
            try:
                self._on_query(event)
            except Exception:  # the metrics hook must never break an analysis
                log.exception("prometheus query observer failed")
        return outcome

    def _instant_params(self, at: datetime | None) -> dict[str, Any]:
        return {**self._params, "time": at.timestamp()} if at is not None else dict(self._params)

    async def query(self, promql: str, at: datetime | None = None) -> InstantOutcome:
        """One number: the value of a single-series instant vector or a scalar."""
        params = self._instant_params(at)
        return await self._run(
            "instant", lambda: parse_instant(self._client.custom_query(promql, params=params))
        )

    async def query_range(
        self, promql: str, start: datetime, end: datetime, step_seconds: float
    ) -> RangeOutcome:
        """The finite samples of a single series between ``start`` and ``end``."""
        if step_seconds <= 0:
            raise ValueError(f"step must be positive, got {step_seconds}")
        params = dict(self._params)
        step = f"{step_seconds:g}"
        return await self._run(
            "range",
            lambda: parse_range(
                self._client.custom_query_range(promql, start, end, step, params=params)
            ),
        )

    async def query_vector(self, promql: str, at: datetime | None = None) -> VectorOutcome:
        """Every series of an instant vector with its labels."""
        params = self._instant_params(at)
        return await self._run(
            "vector", lambda: parse_vector(self._client.custom_query(promql, params=params))
        )

    async def is_online(self) -> bool:
        """True when Prometheus answers its base URL."""
        outcome = await self._run("online", self._client.check_prometheus_connection)
        return outcome is True


# --------------------------------------------------------------------------- factory

SecretReader = Callable[[SecretKeyRef], str | Awaitable[str]]
"""Reads one key of a Secret in the rollout's namespace (sync or async); supplied by the caller."""


def _fingerprint(*values: str | None) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(b"\x00" if value is None else b"\x01" + value.encode())
        digest.update(b"\xff")
    return digest.hexdigest()


class PrometheusProviderFactory:
    """Builds providers from a ``PrometheusSpec`` and caches them per (address, timeout, auth, TLS),
    so rollouts pointing at the same Prometheus share one connection pool and one thread pool.

    The cache is a small LRU; an evicted provider's pool is closed (a request still running on
    it completes). Secret values only enter the cache key as a SHA-256 fingerprint.
    """

    def __init__(
        self,
        default_address: str | None = None,
        *,
        max_cached: int = 128,
        max_workers: int = DEFAULT_WORKERS,
        on_query: QueryObserver | None = None,
    ) -> None:
        self.default_address = default_address
        self._max_cached = max_cached
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="prometheus"
        )
        self._on_query = on_query
        self._cache: OrderedDict[str, PrometheusProvider] = OrderedDict()

    async def provider_for(
        self, spec: PrometheusSpec, read_secret: SecretReader
    ) -> PrometheusProvider:
        """The provider for ``spec``; ``read_secret`` resolves its Secret references."""
        address = spec.address or self.default_address
        if not address:
            raise ValueError(
                "no Prometheus address: set spec.analysis.prometheus.address or start the "
                "operator with --prometheus-url"
            )

        async def read(ref: SecretKeyRef | None) -> str | None:
            if ref is None:
                return None
            value = read_secret(ref)
            return await value if inspect.isawaitable(value) else value

        auth, tls = spec.auth, spec.tls
        token = await read(auth.bearer_token if auth else None)
        username = await read(auth.username if auth else None)
        password = await read(auth.password if auth else None)
        if (username is None) != (password is None):
            raise ValueError("Prometheus basic auth needs both username and password")
        ca_pem = await read(tls.ca if tls else None)
        verify = not (tls.insecure_skip_verify if tls else False)
        timeout = parse_duration(spec.timeout or "5s").total_seconds()

        key = _fingerprint(address, repr(timeout), repr(verify), token, username, password, ca_pem)
        provider = self._cache.get(key)
        if provider is not None:
            self._cache.move_to_end(key)
            return provider
        provider = PrometheusProvider(
            address,
            timeout,
            bearer_token=token,
            basic_auth=(username, password)
            if username is not None and password is not None
            else None,
            ca_pem=ca_pem,
            verify=verify,
            executor=self._executor,
            on_query=self._on_query,
        )
        log.debug("prometheus provider created", address=redact_address(address), timeout=timeout)
        self._cache[key] = provider
        while len(self._cache) > self._max_cached:
            _, evicted = self._cache.popitem(last=False)
            evicted.close()
        return provider

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        """Close every cached provider and the thread pool."""
        for provider in self._cache.values():
            provider.close()
        self._cache.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
