"""Prometheus as a :class:`MetricProvider`, on the operator's one async HTTP stack (httpx).

Every query is one bounded call (:mod:`modelrollout.outbound`): a total deadline, the
``timeout`` of the spec, that covers the wait for a place, connecting and the whole answer (a
server trickling a byte every half second is cut off at the deadline like a silent one), and
an answer of at most :data:`BODY_LIMIT` bytes (streamed; reading stops there). Queries share a
:class:`~modelrollout.outbound.FairLimiter` by namespace: one namespace's slow Prometheus holds
at most its share of places, never another namespace's. The same timeout goes to Prometheus as
its evaluation ``timeout``. Nothing is retried here: the next analysis interval is the retry
and ``errorLimit`` decides when errors matter.

Outcomes are typed: a number is :class:`Value`; an empty result, NaN or ±Inf is :class:`NoData`
(inconclusive, never a pass); connection refused, timeout, an answer too large, HTTP 4xx/5xx
(with Prometheus' own error text, e.g. a PromQL parse error), a malformed body, or **several
series where one is expected** is :class:`ProviderError`. The last one is an error rather
than no data because it is a mistake in the query (a missing ``sum()``) that waiting will not
fix. Every error text is short (:func:`~modelrollout.outbound.clip`): a body is never echoed
whole.

prometheus-api-client's ``PrometheusConnect`` did the HTTP here until it had to be bounded: it
is blocking (requests: per-read timeouts only, bodies read whole, a thread per call) and its
result helpers need pandas. The query API it speaks (paths, parameters, rounded range bounds)
is kept; the library is the reference client the integration tests compare this one with.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import structlog

from modelrollout.api.models import PrometheusSpec, SecretKeyRef, parse_duration
from modelrollout.metrics.base import (
    InstantOutcome,
    NoData,
    ProviderError,
    RangeOutcome,
    VectorOutcome,
)
from modelrollout.metrics.results import parse_instant, parse_range, parse_vector
from modelrollout.metrics.templates import format_duration
from modelrollout.outbound import (
    Answer,
    AnswerTooLarge,
    FairLimiter,
    bounded_request,
    clip,
    new_client,
    tls_context,
)
from modelrollout.outbound.http import MIB, transport_failure

log = structlog.get_logger(__name__)

BODY_LIMIT = 1 * MIB
"""Largest answer read from Prometheus. A range query of the most points analysis asks for
(10,000) is about 0.3 MiB; anything larger is refused as an error, not read on."""
CAPACITY = 64
"""Queries in flight at once, all namespaces together (bounds memory: CAPACITY x BODY_LIMIT)."""
PER_NAMESPACE = 16
"""Queries in flight at once for one namespace."""

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

__all__ = ["PrometheusProvider", "PrometheusProviderFactory", "QueryEvent", "parse_instant",
           "parse_range", "parse_vector", "redact_address"]  # fmt: skip


def redact_address(address: str) -> str:
    """The address without any ``user:password@`` part, for logs and messages."""
    parts = urlsplit(address)
    if parts.username is None and parts.password is None:
        return address
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _error_text(status: int, body: bytes) -> str:
    """Prometheus' own error text (``errorType: error``), else the start of the body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        kind = parsed.get("errorType")
        return clip(f"{kind}: {parsed['error']}" if kind else parsed["error"])
    text = body.decode("utf-8", errors="replace").strip()
    return clip(text) or httpx.codes.get_reason_phrase(status) or "no body"


class _Failed(Exception):
    """A request that produced no result; the text becomes the ProviderError's reason."""


class _Unreachable(_Failed):
    """No connection could be made."""


def _outcome_kind(outcome: object) -> QueryOutcomeKind:
    if isinstance(outcome, ProviderError):
        return "error"
    if isinstance(outcome, NoData):
        return "no_data"
    return "value"


def _result(answer: Answer) -> Any:
    """The ``data.result`` of a successful answer; :class:`_Failed` for anything else."""
    if answer.status >= 300:
        hint = " (redirects are not followed)" if answer.status < 400 else ""
        raise _Failed(
            f"answered HTTP {answer.status}: {_error_text(answer.status, answer.body)}{hint}"
        )
    body = answer.whole()
    encoding = answer.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise _Failed(f"answered with Content-Encoding {clip(encoding, 40)}; asked for none")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({clip(str(exc), 120)})") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), dict):
        raise ValueError("no data object")
    if "result" not in parsed["data"]:
        raise ValueError("no data.result")
    return parsed["data"]["result"]


class PrometheusProvider:
    """A :class:`~modelrollout.metrics.base.VectorProvider` backed by one Prometheus server.

    Its HTTP client (one connection pool, the credentials, the TLS context) is shared by every
    namespace's view of it (:meth:`for_namespace`); each view's queries take places in the
    limiter under its own namespace. Credentials stay in the client; they are never logged nor
    put in messages.
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
        limiter: FairLimiter | None = None,
        namespace: str = "",
        body_limit: int = BODY_LIMIT,
        on_query: QueryObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if bearer_token is not None and basic_auth is not None:
            raise ValueError("use either a bearer token or basic auth, not both")
        self.address = address.rstrip("/")
        self.timeout = timeout
        self.namespace = namespace
        self.body_limit = body_limit
        self._display = redact_address(self.address)
        self._limiter = limiter or FairLimiter(CAPACITY, PER_NAMESPACE)
        self._on_query = on_query
        self._params = {"timeout": format_duration(timedelta(seconds=timeout))}
        try:
            verify_with = tls_context(ca_pem, verify)
        except ValueError:
            raise ValueError("the Prometheus CA bundle is not valid PEM") from None
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
        self._client = new_client(
            verify_with, headers=headers, auth=basic_auth, transport=transport
        )

    def __repr__(self) -> str:
        return f"PrometheusProvider({self._display!r}, timeout={self.timeout:g})"

    def for_namespace(self, namespace: str) -> PrometheusProvider:
        """This provider for a caller in ``namespace``: the same client, that namespace's share."""
        if namespace == self.namespace:
            return self
        view = copy.copy(self)
        view.namespace = namespace
        return view

    async def aclose(self) -> None:
        """Close the connection pool (shared by every namespace's view)."""
        await self._client.aclose()

    async def _get(self, path: str, params: dict[str, Any]) -> Answer:
        request = self._client.build_request("GET", f"{self.address}{path}", params=params)
        try:
            answer = await bounded_request(
                self._client,
                request,
                deadline=self.timeout,
                limit=self.body_limit,
                limiter=self._limiter,
                key=self.namespace,
            )
        except TimeoutError:
            raise _Failed(f"did not answer within {self.timeout:g}s") from None
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError):
                raise _Unreachable(clip(transport_failure(exc))) from None
            raise _Failed(f"request failed: {clip(transport_failure(exc))}") from None
        return answer

    async def _run(self, kind: QueryKind, call: Callable[[], Awaitable[_T]]) -> _T | ProviderError:
        started = time.perf_counter()
        outcome: _T | ProviderError
        try:
            outcome = await call()
        except _Unreachable as exc:
            outcome = ProviderError(clip(f"cannot reach Prometheus at {self._display}: {exc}"))
        except _Failed as exc:
            outcome = ProviderError(clip(f"Prometheus at {self._display} {exc}"))
        except AnswerTooLarge as exc:
            outcome = ProviderError(f"Prometheus at {self._display}: {exc}")
        except (ValueError, KeyError, TypeError) as exc:  # a body that is not Prometheus JSON
            outcome = ProviderError(
                clip(f"malformed response from Prometheus at {self._display}: {exc}")
            )
        if self._on_query is not None:
            seconds = time.perf_counter() - started
            event = QueryEvent(self._display, kind, _outcome_kind(outcome), seconds)
            try:
                self._on_query(event)
            except Exception:  # the metrics hook must never break an analysis
                log.exception("prometheus query observer failed")
        return outcome

    def _instant_params(self, promql: str, at: datetime | None) -> dict[str, Any]:
        params: dict[str, Any] = {"query": promql, **self._params}
        if at is not None:
            params["time"] = at.timestamp()
        return params

    async def _query(self, params: dict[str, Any]) -> Any:
        return _result(await self._get("/api/v1/query", params))

    async def query(self, promql: str, at: datetime | None = None) -> InstantOutcome:
        """One number: the value of a single-series instant vector or a scalar."""
        params = self._instant_params(promql, at)

        async def call() -> InstantOutcome:
            return parse_instant(await self._query(params))

        return await self._run("instant", call)

    async def query_range(
        self, promql: str, start: datetime, end: datetime, step_seconds: float
    ) -> RangeOutcome:
        """The finite samples of a single series between ``start`` and ``end``."""
        if step_seconds <= 0:
            raise ValueError(f"step must be positive, got {step_seconds}")
        # whole seconds, as prometheus-api-client sends them
        params = {
            "query": promql,
            "start": round(start.timestamp()),
            "end": round(end.timestamp()),
            "step": f"{step_seconds:g}",
            **self._params,
        }

        async def call() -> RangeOutcome:
            return parse_range(_result(await self._get("/api/v1/query_range", params)))

        return await self._run("range", call)

    async def query_vector(self, promql: str, at: datetime | None = None) -> VectorOutcome:
        """Every series of an instant vector with its labels."""
        params = self._instant_params(promql, at)

        async def call() -> VectorOutcome:
            return parse_vector(await self._query(params))

        return await self._run("vector", call)

    async def is_online(self) -> bool:
        """True when Prometheus answers its base URL with a 2xx or 3xx (its UI redirects there;
        redirects are not followed)."""

        async def call() -> bool:
            answer = await self._get("/", {})
            return 200 <= answer.status < 400

        return await self._run("online", call) is True


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
    so rollouts pointing at the same Prometheus share one connection pool; every provider
    shares the factory's :class:`FairLimiter`, and each caller gets its namespace's view.

    The cache is a small LRU; an evicted provider's pool is closed in the background (a query
    still running on it fails and the next interval asks again). Secret values only enter the
    cache key as a SHA-256 fingerprint.
    """

    def __init__(
        self,
        default_address: str | None = None,
        *,
        max_cached: int = 128,
        limiter: FairLimiter | None = None,
        on_query: QueryObserver | None = None,
    ) -> None:
        self.default_address = default_address
        self._max_cached = max_cached
        self.limiter = limiter or FairLimiter(CAPACITY, PER_NAMESPACE)
        self._on_query = on_query
        self._cache: OrderedDict[str, PrometheusProvider] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def provider_for(
        self, spec: PrometheusSpec, read_secret: SecretReader, namespace: str = ""
    ) -> PrometheusProvider:
        """The provider for ``spec`` as seen from ``namespace``; ``read_secret`` resolves its
        Secret references."""
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
            return provider.for_namespace(namespace)
        provider = PrometheusProvider(
            address,
            timeout,
            bearer_token=token,
            basic_auth=(username, password)
            if username is not None and password is not None
            else None,
            ca_pem=ca_pem,
            verify=verify,
            limiter=self.limiter,
            on_query=self._on_query,
        )
        log.debug("prometheus provider created", address=redact_address(address), timeout=timeout)
        self._cache[key] = provider
        while len(self._cache) > self._max_cached:
            _, evicted = self._cache.popitem(last=False)
            task = asyncio.ensure_future(evicted.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return provider.for_namespace(namespace)

    def __len__(self) -> int:
        return len(self._cache)

    async def aclose(self) -> None:
        """Close every cached provider's connection pool."""
        providers = list(self._cache.values())
        self._cache.clear()
        for provider in providers:
            await provider.aclose()
