"""The lab gateway's data path: forward one request through a route, mirror it, count it, and
generate steady load. Independent of Kubernetes: a ``Directory`` tells what a route says and
which model-server ports serve a Service (the gateway's is backed by watches, tests use a dict).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from e2e.lab.routes import (
    Backend,
    Mirror,
    Request,
    RouteError,
    RouteKind,
    RouteTable,
    Rule,
    should_mirror,
    weighted_choice,
)

LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT_S = 10.0
MAX_MIRRORS_IN_FLIGHT = 512
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class RouteNotFound(LookupError):
    """No such route object (yet)."""


@dataclass(frozen=True)
class Endpoint:
    pod: str
    port: int


class Directory(Protocol):
    def route(self, kind: RouteKind, namespace: str, name: str) -> RouteTable:
        """The parsed route; raises RouteNotFound or RouteError."""
        ...

    def endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        """Ready model-server endpoints of a Service, in a stable order."""
        ...


@dataclass(frozen=True)
class RouteId:
    namespace: str
    kind: RouteKind
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind.value}/{self.name}"


@dataclass
class BackendStats:
    served: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    mirrored: int = 0
    mirrored_codes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "codes": dict(self.codes),
            "mirrored": self.mirrored,
            "mirroredCodes": dict(self.mirrored_codes),
        }


@dataclass
class RouteStats:
    since: float = field(default_factory=time.time)
    backends: dict[str, BackendStats] = field(default_factory=dict)
    unrouted: Counter[str] = field(default_factory=Counter)  # answered by the gateway itself
    mirrors_dropped: int = 0
    mirrors_in_flight: int = 0
    last_error: str = ""
    observed_generation: int = 0
    observed_resource_version: str = ""

    def backend(self, service: str) -> BackendStats:
        if service not in self.backends:
            self.backends[service] = BackendStats()
        return self.backends[service]

    @property
    def total(self) -> int:
        return sum(b.served for b in self.backends.values()) + sum(self.unrouted.values())

    def as_dict(self, route: RouteId) -> dict[str, Any]:
        return {
            "route": {"namespace": route.namespace, "kind": route.kind.value, "name": route.name},
            "since": self.since,
            "total": self.total,
            "backends": {k: v.as_dict() for k, v in sorted(self.backends.items())},
            "unrouted": dict(self.unrouted),
            "mirrorsDropped": self.mirrors_dropped,
            "mirrorsInFlight": self.mirrors_in_flight,
            "lastError": self.last_error,
            "observed": {
                "generation": self.observed_generation,
                "resourceVersion": self.observed_resource_version,
            },
        }


@dataclass(frozen=True)
class Outcome:
    """What the user sees for one request."""

    status: int
    body: bytes
    content_type: str = "application/json"
    backend: str = ""
    pod: str = ""
    rule: int | None = None
    error: str = ""


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PromCounter(
            "lab_gateway_requests",
            "Requests the lab gateway sent (mirrored=true) or answered, by route and backend.",
            ["namespace", "kind", "route", "backend", "code", "mirrored"],
            registry=registry,
        )
        self.duration = Histogram(
            "lab_gateway_request_duration_seconds",
            "Time to answer a routed (not mirrored) request, as the client sees it.",
            ["namespace", "kind", "route", "backend"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=registry,
        )


def _json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class Proxy:
    def __init__(
        self,
        directory: Directory,
        session: aiohttp.ClientSession,
        *,
        registry: CollectorRegistry | None = None,
        rnd: random.Random | None = None,
    ) -> None:
        self.directory = directory
        self.session = session
        self.rnd = rnd or random.Random()
        self.stats: dict[RouteId, RouteStats] = {}
        self.metrics = GatewayMetrics(registry or CollectorRegistry())
        self._rr: dict[tuple[str, str], int] = {}
        self._mirror_tasks: set[asyncio.Task[None]] = set()

    def route_stats(self, route: RouteId) -> RouteStats:
        if route not in self.stats:
            self.stats[route] = RouteStats()
        return self.stats[route]

    def reset_stats(self, route: RouteId) -> None:
        self.stats[route] = RouteStats()

    def _pick_endpoint(self, namespace: str, service: str) -> Endpoint | None:
        eps = self.directory.endpoints(namespace, service)
        if not eps:
            return None
        i = self._rr.get((namespace, service), 0)
        self._rr[(namespace, service)] = i + 1
        return eps[i % len(eps)]

    async def forward(
        self,
        route: RouteId,
        request: Request,
        body: bytes,
    ) -> Outcome:
        """Route one request: pick a rule and a backend, start the mirrors, call the backend."""
        started = time.perf_counter()
        stats = self.route_stats(route)
        try:
            table = self.directory.route(route.kind, route.namespace, route.name)
        except (RouteNotFound, RouteError) as exc:
            status = 404 if isinstance(exc, RouteNotFound) else 500
            return self._unrouted(route, stats, status, str(exc))
        stats.observed_generation = table.generation
        stats.observed_resource_version = table.resource_version
        rule = table.select(request)
        if rule is None:
            return self._unrouted(route, stats, 404, f"no rule of {route} matches {request.path}")
        for mirror in rule.mirrors:
            if should_mirror(mirror, self.rnd.random()):
                self._start_mirror(route, stats, rule, mirror, request, body)
        backend = weighted_choice(rule.backends, self.rnd.random())
        if backend is None:
            return self._unrouted(
                route, stats, 500, f"{route} rule {rule.index} has no backend with weight > 0"
            )
        if backend.invalid:
            outcome = Outcome(500, _json_error(backend.invalid), backend=backend.service)
        else:
            outcome = await self._call(backend, rule, request, body)
        outcome = Outcome(
            outcome.status,
            outcome.body,
            outcome.content_type,
            backend.service,
            outcome.pod,
            rule.index,
            outcome.error,
        )
        b = stats.backend(backend.service)
        b.served += 1
        b.codes[str(outcome.status)] += 1
        if outcome.error:
            stats.last_error = outcome.error
        labels = (route.namespace, route.kind.value, route.name, backend.service)
        self.metrics.requests.labels(*labels, str(outcome.status), "false").inc()
        self.metrics.duration.labels(*labels).observe(time.perf_counter() - started)
        return outcome

    def _unrouted(self, route: RouteId, stats: RouteStats, status: int, message: str) -> Outcome:
        stats.unrouted[str(status)] += 1
        stats.last_error = message
        self.metrics.requests.labels(
            route.namespace, route.kind.value, route.name, "", str(status), "false"
        ).inc()
        return Outcome(status, _json_error(message), error=message)

    async def _call(self, backend: Backend, rule: Rule, request: Request, body: bytes) -> Outcome:
        ep = self._pick_endpoint(backend.namespace, backend.service)
        if ep is None:
            msg = f"service {backend.namespace}/{backend.service} has no ready endpoints"
            return Outcome(503, _json_error(msg), error=msg)
        headers = backend.headers.apply(rule.headers.apply(dict(request.headers)))
        return await self._send(ep, request, headers, body, rule.timeout_s)

    async def _send(
        self,
        ep: Endpoint,
        request: Request,
        headers: Mapping[str, str],
        body: bytes,
        timeout_s: float | None,
    ) -> Outcome:
        url = f"http://{LOOPBACK}:{ep.port}{request.path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s or DEFAULT_TIMEOUT_S)
        out_headers = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self.session.request(
                request.method, url, data=body, headers=out_headers, timeout=timeout
            ) as resp:
                data = await resp.read()
                return Outcome(
                    resp.status,
                    data,
                    resp.headers.get("Content-Type", "application/octet-stream"),
                    pod=ep.pod,
                )
        except TimeoutError:
            msg = f"pod {ep.pod} did not answer within {timeout.total:g}s"
            return Outcome(504, _json_error(msg), pod=ep.pod, error=msg)
        except aiohttp.ClientError as exc:
            msg = f"pod {ep.pod} (port {ep.port}): {type(exc).__name__}: {exc}"
            return Outcome(502, _json_error(msg), pod=ep.pod, error=msg)

    def _start_mirror(
        self,
        route: RouteId,
        stats: RouteStats,
        rule: Rule,
        mirror: Mirror,
        request: Request,
        body: bytes,
    ) -> None:
        if stats.mirrors_in_flight >= MAX_MIRRORS_IN_FLIGHT:
            stats.mirrors_dropped += 1
            return
        stats.mirrors_in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._mirror(route, stats, rule, mirror, request, body)
        )
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _mirror(
        self,
        route: RouteId,
        stats: RouteStats,
        rule: Rule,
        mirror: Mirror,
        request: Request,
        body: bytes,
    ) -> None:
        """Send the copy; its answer is counted and discarded."""
        try:
            ep = self._pick_endpoint(mirror.namespace, mirror.service)
            if ep is None:
                status = 503
            else:
                headers = rule.headers.apply(dict(request.headers))
                status = (await self._send(ep, request, headers, body, rule.timeout_s)).status
            b = stats.backend(mirror.service)
            b.mirrored += 1
            b.mirrored_codes[str(status)] += 1
            self.metrics.requests.labels(
                route.namespace, route.kind.value, route.name, mirror.service, str(status), "true"
            ).inc()
        finally:
            stats.mirrors_in_flight -= 1

    async def close(self) -> None:
        for task in list(self._mirror_tasks):
            task.cancel()
        for task in list(self._mirror_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- steady load -----------------------------------------------------------------------------


class LoadSpec(BaseModel):
    """Body of ``PUT /load/{namespace}/{kind}/{name}``."""

    model_config = ConfigDict(extra="forbid")

    rps: float = Field(gt=0, le=2000, description="Requests per second, spread evenly.")
    path: str = Field(default="/predict", description="Request path (and query).")
    method: str = Field(default="POST")
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = Field(default=None, description="JSON body; null sends an empty body.")
    duration_s: float = Field(
        default=900, gt=0, le=3600, description="The load stops by itself after this long."
    )
    max_requests: int | None = Field(default=None, gt=0, description="Stop after this many.")
    max_in_flight: int = Field(default=256, gt=0, le=2000)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must start with '/', got {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        m = v.upper()
        if m not in ("GET", "POST", "PUT"):
            raise ValueError(f"method must be GET, POST or PUT, got {v!r}")
        return m

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()

    def request(self) -> Request:
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.body is not None:
            headers.setdefault("content-type", "application/json")
        return Request(method=self.method, path=self.path, headers=headers, query=params)


class LoadJob:
    """Sends ``spec.rps`` requests per second through a route until stopped or done."""

    def __init__(self, proxy: Proxy, route: RouteId, spec: LoadSpec) -> None:
        self.proxy = proxy
        self.route = route
        self.sent = 0
        self.dropped = 0  # not sent: max_in_flight requests were still waiting
        self.in_flight = 0
        self.codes: Counter[str] = Counter()
        self.done = False
        self._task: asyncio.Task[None] | None = None
        self.update(spec)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def update(self, spec: LoadSpec) -> None:
        """Change rate and request; the deadline counts from now."""
        self.spec = spec
        self.started = time.time()
        self._request = spec.request()
        self._body = spec.body_bytes()
        self._restart = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _one(self, request: Request, body: bytes) -> None:
        try:
            outcome = await self.proxy.forward(self.route, request, body)
            self.codes[str(outcome.status)] += 1
        finally:
            self.in_flight -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        next_at = loop.time()
        try:
            while True:
                spec = self.spec
                if time.time() - self.started >= spec.duration_s:
                    break
                if spec.max_requests is not None and self.sent >= spec.max_requests:
                    break
                now = loop.time()
                if self._restart:
                    self._restart = False
                    next_at = now
                if now < next_at:
                    await asyncio.sleep(min(next_at - now, 0.2))
                    continue
                if self.in_flight >= spec.max_in_flight:
                    self.dropped += 1
                else:
                    self.sent += 1
                    self.in_flight += 1
                    t = loop.create_task(self._one(self._request, self._body))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                # Open loop at a fixed rate; after a stall, do not burst more than 1 s of backlog.
                next_at = max(next_at + 1.0 / spec.rps, now - 1.0)
            if tasks:
                await asyncio.wait(tasks, timeout=DEFAULT_TIMEOUT_S + 1)
        finally:
            for t in tasks:
                t.cancel()
            self.done = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": {
                "namespace": self.route.namespace,
                "kind": self.route.kind.value,
                "name": self.route.name,
            },
            "spec": self.spec.model_dump(),
            "started": self.started,
            "sent": self.sent,
            "dropped": self.dropped,
            "inFlight": self.in_flight,
            "codes": dict(self.codes),
            "done": self.done,
        }
