"""The lab gateway's data path and HTTP API against small in-process backends (no Kubernetes)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client
from prometheus_client import CollectorRegistry

from e2e.lab.gateway import GatewayApp, KubeDirectory
from e2e.lab.proxy import Endpoint, Proxy, RouteId, RouteNotFound
from e2e.lab.routes import (
    Request,
    RouteError,
    RouteKind,
    RouteTable,
    parse_httproute,
    parse_virtualservice,
)
from e2e.lab.statefiles import PodRecord, pods_doc, write_json_atomic

NS = "ml"


@dataclass
class StaticDirectory:
    routes: dict[tuple[RouteKind, str], RouteTable] = field(default_factory=dict)
    eps: dict[str, list[Endpoint]] = field(default_factory=dict)

    def route(self, kind: RouteKind, namespace: str, name: str) -> RouteTable:
        if (kind, name) not in self.routes:
            raise RouteNotFound(f"{kind.value} {namespace}/{name} not found")
        return self.routes[(kind, name)]

    def endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        return self.eps.get(service, [])


@dataclass
class Backend:
    name: str
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)  # by the x-env header value
    status: int = 200


async def _backend(b: Backend) -> TestServer:
    async def predict(req: web.Request) -> web.Response:
        b.hits[req.headers.get("x-env", "")] += 1
        return web.json_response({"backend": b.name}, status=b.status)

    app = web.Application()
    app.router.add_post("/predict", predict)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    b.port = server.port or 0
    return server


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    bs = {n: Backend(n) for n in ("stable", "canary")}
    servers = [await _backend(b) for b in bs.values()]
    yield bs
    for s in servers:
        await s.close()


def split_route(stable: int, canary: int, **rule: object) -> RouteTable:
    return parse_httproute(
        {
            "metadata": {"namespace": NS, "name": "r", "generation": 2},
            "spec": {
                "rules": [
                    {
                        "backendRefs": [
                            {"name": "stable", "weight": stable},
                            {"name": "canary", "weight": canary},
                        ],
                        **rule,
                    }
                ]
            },
        }
    )


def directory(backends: dict[str, Backend], table: RouteTable) -> StaticDirectory:
    return StaticDirectory(
        routes={(table.kind, table.name): table},
        eps={n: [Endpoint(f"{n}-0", b.port)] for n, b in backends.items()},
    )


RID = RouteId(NS, RouteKind.HTTPROUTE, "r")


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_split_follows_weights(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    proxy = Proxy(directory(backends, split_route(90, 10)), session, rnd=random.Random(3))
    n = 400
    outcomes = [await proxy.forward(RID, Request(), b"") for _ in range(n)]
    seen = Counter(o.backend for o in outcomes)
    assert seen["stable"] + seen["canary"] == n
    assert abs(seen["canary"] / n - 0.1) < 4 * (0.1 * 0.9 / n) ** 0.5
    # the gateway's counts agree with what the backends received
    stats = proxy.route_stats(RID).as_dict(RID)
    assert stats["backends"]["canary"]["served"] == backends["canary"].hits.total()
    assert stats["backends"]["stable"]["codes"] == {"200": backends["stable"].hits.total()}
    assert stats["observed"]["generation"] == 2


async def test_mirror_copies_every_request_and_the_user_sees_the_primary(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    table = split_route(
        100,
        0,
        filters=[{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "canary"}}}],
    )
    proxy = Proxy(directory(backends, table), session)
    outcomes = [await proxy.forward(RID, Request(), b"") for _ in range(50)]
    assert {o.backend for o in outcomes} == {"stable"}
    assert all(b'"stable"' in o.body for o in outcomes)
    stats = proxy.route_stats(RID)
    await until(lambda: stats.backend("canary").mirrored == 50)
    assert backends["canary"].hits.total() == 50
    assert stats.backend("canary").served == 0
    assert stats.backend("canary").mirrored_codes == {"200": 50}


async def test_mirror_percent_is_respected(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    mirror = {"backendRef": {"name": "canary"}, "percent": 20}
    table = split_route(100, 0, filters=[{"type": "RequestMirror", "requestMirror": mirror}])
    proxy = Proxy(directory(backends, table), session, rnd=random.Random(5))
    n = 500
    for _ in range(n):
        await proxy.forward(RID, Request(), b"")
    stats = proxy.route_stats(RID)
    await until(lambda: stats.mirrors_in_flight == 0)
    assert abs(stats.backend("canary").mirrored / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5


async def test_backend_without_endpoints_answers_503_and_is_counted(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    d = directory(backends, split_route(0, 1))
    d.eps["canary"] = []
    proxy = Proxy(d, session)
    outcome = await proxy.forward(RID, Request(), b"")
    assert (outcome.status, outcome.backend) == (503, "canary")
    assert b"no ready endpoints" in outcome.body
    assert proxy.route_stats(RID).backend("canary").codes == {"503": 1}


async def test_unroutable_requests(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    proxy = Proxy(directory(backends, split_route(0, 0)), session)
    assert (await proxy.forward(RID, Request(), b"")).status == 500  # all weights zero
    missing = RouteId(NS, RouteKind.VIRTUALSERVICE, "nope")
    outcome = await proxy.forward(missing, Request(), b"")
    assert outcome.status == 404
    assert proxy.route_stats(missing).unrouted == {"404": 1}


async def test_dead_pod_gives_502(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    d = directory(backends, split_route(1, 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        d.eps["stable"] = [Endpoint("gone", s.getsockname()[1])]  # bound, not listening
        outcome = await Proxy(d, session).forward(RID, Request(), b"")
    assert outcome.status == 502
    assert "gone" in outcome.error


async def test_virtualservice_with_header_edit(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    table = parse_virtualservice(
        {
            "metadata": {"namespace": NS, "name": "v"},
            "spec": {
                "http": [
                    {
                        "route": [{"destination": {"host": "canary"}}],
                        "headers": {"request": {"set": {"x-env": "lab"}}},
                    }
                ]
            },
        }
    )
    proxy = Proxy(directory(backends, table), session)
    outcome = await proxy.forward(RouteId(NS, RouteKind.VIRTUALSERVICE, "v"), Request(), b"")
    assert outcome.status == 200
    assert backends["canary"].hits == {"lab": 1}


async def test_round_robin_over_pods(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> None:
    d = directory(backends, split_route(1, 0))
    d.eps["stable"] = [
        Endpoint("a", backends["stable"].port),
        Endpoint("b", backends["stable"].port),
    ]
    proxy = Proxy(d, session)
    pods = [(await proxy.forward(RID, Request(), b"")).pod for _ in range(4)]
    assert pods == ["a", "b", "a", "b"]


# --- HTTP API --------------------------------------------------------------------------------


@pytest.fixture
async def api(
    backends: dict[str, Backend], session: aiohttp.ClientSession
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    registry = CollectorRegistry()
    proxy = Proxy(directory(backends, split_route(50, 50)), session, registry=registry)
    client = TestClient(TestServer(GatewayApp(proxy, registry).build(), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


Api = TestClient[web.Request, web.Application]


async def poll_json(
    call: Callable[[], Awaitable[aiohttp.ClientResponse]], check: Callable[[Any], bool]
) -> Any:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        resp = await call()
        doc = await resp.json()
        if check(doc):
            return doc
        assert asyncio.get_running_loop().time() < deadline, f"last answer: {doc}"
        await asyncio.sleep(0.05)


async def test_load_runs_at_rate_and_stops_by_itself(api: Api) -> None:
    resp = await api.put("/load/ml/httproute/r", json={"rps": 200, "max_requests": 60})
    assert resp.status == 201
    started = asyncio.get_running_loop().time()
    loads = await poll_json(lambda: api.get("/load"), lambda d: d["loads"][0]["done"])
    elapsed = asyncio.get_running_loop().time() - started
    assert loads["loads"][0]["sent"] == 60
    assert 0.2 < elapsed < 5  # 60 requests at 200/s take about 0.3 s
    stats = await (await api.get("/stats/ml/httproute/r")).json()
    assert stats["total"] == 60
    served = sum(b["served"] for b in stats["backends"].values())
    assert served == 60
    reset = await api.delete("/stats/ml/httproute/r")
    assert (await reset.json())["total"] == 60
    assert (await (await api.get("/stats/ml/httproute/r")).json())["total"] == 0


async def test_load_can_be_changed_and_stopped(api: Api) -> None:
    assert (await api.put("/load/ml/httproute/r", json={"rps": 5})).status == 201
    changed = await api.put("/load/ml/httproute/r", json={"rps": 50, "path": "/predict"})
    assert changed.status == 200
    assert (await changed.json())["spec"]["rps"] == 50
    stopped = await api.delete("/load/ml/httproute/r")
    assert stopped.status == 200
    assert (await api.get("/load")).status == 200
    assert (await (await api.get("/load")).json())["loads"] == []
    assert (await api.delete("/load/ml/httproute/r")).status == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"rps": 0}, "rps: Input should be greater than 0"),
        ({"rps": 1, "path": "predict"}, "path must start with '/'"),
        ({"rps": 1, "method": "PATCH"}, "method must be GET, POST or PUT"),
        ({"rps": 1, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"rps": 1, "duration_s": 99999}, "duration_s: Input should be less than or equal to 3600"),
    ],
)
async def test_bad_load_spec_is_refused_with_the_reason(
    api: Api, body: dict[str, Any], detail: str
) -> None:
    resp = await api.put("/load/ml/httproute/r", json=body)
    assert resp.status == 400
    assert any(detail in d for d in (await resp.json())["details"])


async def test_route_one_request(api: Api, backends: dict[str, Backend]) -> None:
    resp = await api.post("/route/ml/httproute/r?path=/predict", data=b"")
    assert resp.status == 200
    assert resp.headers["X-Lab-Backend"] in ("stable", "canary")
    assert resp.headers["X-Lab-Pod"].endswith("-0")
    assert (await resp.json())["backend"] == resp.headers["X-Lab-Backend"]
    missing = await api.post("/route/ml/virtualservice/none")
    assert missing.status == 404
    assert "not found" in missing.headers["X-Lab-Error"]
    bad_kind = await api.post("/route/ml/ingress/r")
    assert bad_kind.status == 400
    assert "httproute or virtualservice" in (await bad_kind.json())["error"]
    metrics = await (await api.get("/metrics")).text()
    assert 'lab_gateway_requests_total{backend="' in metrics
    table = await (await api.get("/routes/ml/httproute/r")).json()
    assert [b["weight"] for b in table["rules"][0]["backends"]] == [50, 50]
    assert set(table["endpoints"]) == {"ml/stable", "ml/canary"}
    assert table["endpoints"]["ml/canary"] == [{"pod": "canary-0", "port": backends["canary"].port}]


# --- the Kubernetes-backed directory (stores fed by hand, no API server) -----------------------


def _pod(
    name: str, *, ready: bool = True, slot: str = "a", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}"}
    meta["labels"] = {"app": "m", "slot": slot}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "status": {"conditions": [cond]}}


def _record(name: str, port: int | None, uid: str | None = None) -> PodRecord:
    return PodRecord(NS, name, uid or f"uid-{name}", "lab-node-0", port, 1, True, 0, "svc", True)


def test_kube_directory_resolves_ready_pods_with_processes(tmp_path: Path) -> None:
    d = KubeDirectory(client.ApiClient(), tmp_path, threading.Event())
    d.services.sync(
        [{"metadata": {"name": "svc", "namespace": NS}, "spec": {"selector": {"slot": "a"}}}]
    )
    d.pods.sync(
        [
            _pod("p3"),
            _pod("p1"),
            _pod("p2", ready=False),
            _pod("p4", deleting=True),
            _pod("p5", slot="b"),
            _pod("p6"),  # a recreated pod: pods.json still has the old uid
            _pod("p7"),  # no process (scale-test pod)
        ]
    )
    records = [_record(n, 4000 + i) for i, n in enumerate(["p1", "p2", "p3", "p4", "p5"])]
    records += [_record("p6", 4100, uid="old"), _record("p7", None)]
    write_json_atomic(tmp_path / "pods.json", pods_doc(records))
    assert d.endpoints(NS, "svc") == [Endpoint("p1", 4000), Endpoint("p3", 4002)]
    assert d.endpoints(NS, "nope") == []
    # a change to the pods is seen at once
    d.pods.event("MODIFIED", _pod("p2"))
    assert [e.pod for e in d.endpoints(NS, "svc")] == ["p1", "p2", "p3"]
    write_json_atomic(tmp_path / "pods.json", pods_doc([_record("p1", 5000)]))
    assert d.endpoints(NS, "svc") == [Endpoint("p1", 5000)]


def test_kube_directory_routes(tmp_path: Path) -> None:
    d = KubeDirectory(client.ApiClient(), tmp_path, threading.Event())
    with pytest.raises(RouteNotFound, match="HTTPRoute ml/r not found"):
        d.route(RouteKind.HTTPROUTE, NS, "r")
    obj: dict[str, Any] = {
        "metadata": {"name": "r", "namespace": NS, "resourceVersion": "1", "generation": 1},
        "spec": {"rules": [{"backendRefs": [{"name": "svc", "weight": -1}]}]},
    }
    d.routes[RouteKind.HTTPROUTE].sync([obj])
    with pytest.raises(RouteError, match="weight must be >= 0"):
        d.route(RouteKind.HTTPROUTE, NS, "r")
    fixed = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "2", "generation": 2}}
    fixed["spec"] = {"rules": [{"backendRefs": [{"name": "svc", "weight": 3}]}]}
    d.routes[RouteKind.HTTPROUTE].event("MODIFIED", fixed)
    assert d.route(RouteKind.HTTPROUTE, NS, "r").generation == 2
