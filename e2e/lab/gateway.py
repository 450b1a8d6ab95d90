"""The lab gateway: routes traffic by HTTPRoute / VirtualService objects, exactly as they say,
to the model-server processes of the node simulator, and generates steady load.

    python -m e2e.lab.gateway --kubeconfig .lab/kubeconfig --state-dir .lab --port PORT

HTTP API on 127.0.0.1:PORT (``{kind}`` is ``httproute`` or ``virtualservice``):

    PUT    /load/{ns}/{kind}/{name}   start or change steady load; JSON body (LoadSpec):
                                      {"rps": 20, "path": "/predict", "method": "POST",
                                       "headers": {}, "body": null, "duration_s": 900,
                                       "max_requests": null, "max_in_flight": 256}
                                      -> 201 (new) / 200 (changed), the load's state
    DELETE /load/{ns}/{kind}/{name}   stop it -> its final state (404 when there is none)
    GET    /load                      {"loads": [state, ...]}
    DELETE /load                      stop every load
    POST   /route/{ns}/{kind}/{name}  send one request through the route; ?path=/predict
                                      (default) and ?method=POST (default); the body and headers
                                      are forwarded. The answer is the backend's, plus headers
                                      X-Lab-Backend (Service), X-Lab-Pod, X-Lab-Rule, and
                                      X-Lab-Error when the gateway answered itself
    GET    /routes/{ns}/{kind}/{name} the route table as the gateway reads it now ("generation",
                                      "resourceVersion", "rules": [{"backends", "mirrors",
                                      ...}]) and "endpoints": {"ns/svc": [{"pod", "port"}]}
    GET    /stats/{ns}/{kind}/{name}  counts since the last reset (see proxy.RouteStats):
                                      {"total", "backends": {svc: {"served", "codes",
                                       "mirrored", "mirroredCodes"}}, "unrouted", "observed": {
                                       "generation", "resourceVersion"}, ...}
    DELETE /stats/{ns}/{kind}/{name}  reset them (returns the counts before the reset)
    GET    /stats                     every route's counts
    GET    /metrics, /healthz

Backends resolve as: Service -> its selector -> pods with condition Ready=True and no
deletionTimestamp -> their process port in ``.lab/pods.json``; round-robin over those pods.
Routes, Services and pods are watched, so a change is used within milliseconds; ``observed``
in the stats says which route generation served the last request.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from kubernetes import client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from e2e.lab import statefiles
from e2e.lab.informer import Informer, Store, api_client
from e2e.lab.proxy import (
    HOP_BY_HOP,
    Directory,
    Endpoint,
    LoadJob,
    LoadSpec,
    Proxy,
    RouteId,
    RouteNotFound,
)
from e2e.lab.routes import Request, RouteError, RouteKind, RouteTable, parse_route
from e2e.lab.simpods import pod_is_ready, selector_matches

log = logging.getLogger("gateway")

ROUTE_APIS = {
    RouteKind.HTTPROUTE: ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    RouteKind.VIRTUALSERVICE: (
        "networking.istio.io",
        "v1beta1",
        "virtualservices",
        "VirtualService",
    ),
}


class KubeDirectory:
    """Routes, Services and ready pods from watches; pod ports from pods.json."""

    def __init__(self, api: client.ApiClient, state_dir: Path, stop: threading.Event) -> None:
        self._gen = 0
        self._gen_lock = threading.Lock()
        self.services = Store(on_change=self._bump)
        self.pods = Store(on_change=self._bump)
        self.routes = {kind: Store() for kind in RouteKind}
        self._parsed: dict[tuple[RouteKind, str, str], tuple[str, RouteTable | RouteError]] = {}
        self._eps: dict[tuple[str, str], tuple[int, int, list[Endpoint]]] = {}
        self._pods_file = state_dir / statefiles.PODS_FILE
        self._pods_stamp: tuple[int, int, int] = (-1, -1, -1)
        self._pods_version = 0
        self._records: dict[str, statefiles.PodRecord] = {}
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        self.informers = [
            Informer(
                "services",
                core.list_service_for_all_namespaces,
                on_sync=self.services.sync,
                on_event=self.services.event,
                stop=stop,
            ),
            Informer(
                "pods",
                core.list_pod_for_all_namespaces,
                on_sync=self.pods.sync,
                on_event=self.pods.event,
                stop=stop,
            ),
        ]
        for kind, (group, version, plural, _) in ROUTE_APIS.items():
            store = self.routes[kind]
            self.informers.append(
                Informer(
                    plural,
                    custom.list_cluster_custom_object,
                    on_sync=store.sync,
                    on_event=store.event,
                    stop=stop,
                    group=group,
                    version=version,
                    plural=plural,
                )
            )

    def start(self) -> None:
        for inf in self.informers:
            inf.start()

    def _bump(self) -> None:
        with self._gen_lock:
            self._gen += 1

    def route(self, kind: RouteKind, namespace: str, name: str) -> RouteTable:
        obj = self.routes[kind].get(namespace, name)
        if obj is None:
            raise RouteNotFound(f"{ROUTE_APIS[kind][3]} {namespace}/{name} not found")
        rv = str(obj["metadata"].get("resourceVersion"))
        cached = self._parsed.get((kind, namespace, name))
        if cached is None or cached[0] != rv:
            try:
                parsed: RouteTable | RouteError = parse_route(kind, obj)
            except RouteError as exc:
                parsed = exc
            cached = (rv, parsed)
            self._parsed[(kind, namespace, name)] = cached
        if isinstance(cached[1], RouteError):
            raise cached[1]
        return cached[1]

    def _pod_records(self) -> tuple[int, dict[str, statefiles.PodRecord]]:
        """pods.json, re-read when it changed; returns (a version number, the records).

        A file written in the last 200 ms is always re-read: two quick rewrites may share a
        coarse mtime (and the inode of a replaced file can be reused)."""
        try:
            st = os.stat(self._pods_file)
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            recent = time.time_ns() - st.st_mtime_ns < 200_000_000
        except FileNotFoundError:
            stamp, recent = (0, 0, 0), False
        if stamp != self._pods_stamp or recent:
            try:
                self._records = statefiles.read_pods(self._pods_file)
            except (ValueError, TypeError) as exc:
                log.warning("cannot read %s: %s", self._pods_file, exc)
                self._records = {}
            self._pods_stamp = stamp
            self._pods_version += 1
        return self._pods_version, self._records

    def endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        gen = self._gen  # read first: a change while we compute invalidates the result
        stamp, records = self._pod_records()
        cached = self._eps.get((namespace, service))
        if cached is not None and cached[0] == gen and cached[1] == stamp:
            return cached[2]
        eps: list[Endpoint] = []
        svc = self.services.get(namespace, service)
        selector = ((svc or {}).get("spec") or {}).get("selector")
        if svc is not None and selector:
            for pod in sorted(self.pods.list(namespace), key=lambda p: p["metadata"]["name"]):
                meta = pod["metadata"]
                if meta.get("deletionTimestamp") or not pod_is_ready(pod):
                    continue
                if not selector_matches(selector, meta.get("labels") or {}):
                    continue
                rec = records.get(statefiles.pod_key(namespace, meta["name"]))
                if rec is not None and rec.port is not None and rec.uid == meta.get("uid"):
                    eps.append(Endpoint(meta["name"], rec.port))
        self._eps[(namespace, service)] = (gen, stamp, eps)
        return eps


# --- HTTP API --------------------------------------------------------------------------------


def _route_id(req: web.Request) -> RouteId:
    try:
        kind = RouteKind.parse(req.match_info["kind"])
    except RouteError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None
    return RouteId(req.match_info["ns"], kind, req.match_info["name"])


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, default=str))


class GatewayApp:
    def __init__(self, proxy: Proxy, registry: CollectorRegistry) -> None:
        self.proxy = proxy
        self.registry = registry
        self.loads: dict[RouteId, LoadJob] = {}

    def build(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        route = "/{ns}/{kind}/{name}"
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.get("/load", self.list_loads),
                web.delete("/load", self.stop_all_loads),
                web.put("/load" + route, self.put_load),
                web.delete("/load" + route, self.delete_load),
                web.post("/route" + route, self.route),
                web.get("/routes" + route, self.show_route),
                web.get("/stats", self.all_stats),
                web.get("/stats" + route, self.get_stats),
                web.delete("/stats" + route, self.reset_stats),
            ]
        )
        app.on_shutdown.append(self._shutdown)
        return app

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, _req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def list_loads(self, _req: web.Request) -> web.Response:
        return _json({"loads": [job.as_dict() for job in self.loads.values()]})

    async def stop_all_loads(self, _req: web.Request) -> web.Response:
        stopped = []
        for rid in list(self.loads):
            job = self.loads.pop(rid)
            await job.stop()
            stopped.append(job.as_dict())
        return _json({"stopped": stopped})

    async def put_load(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        try:
            spec = LoadSpec.model_validate_json(await req.read())
        except ValidationError as exc:
            errors = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            ]
            return _json({"error": "bad load spec", "details": errors}, 400)
        job = self.loads.get(rid)
        if job is not None and not job.done:
            job.update(spec)
            return _json(job.as_dict())
        job = LoadJob(self.proxy, rid, spec)
        self.loads[rid] = job
        job.start()
        log.info("load %s: %s rps on %s", rid, spec.rps, spec.path)
        return _json(job.as_dict(), 201)

    async def delete_load(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        job = self.loads.pop(rid, None)
        if job is None:
            return _json({"error": f"no load on {rid}"}, 404)
        await job.stop()
        return _json(job.as_dict())

    async def route(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        path = req.query.get("path", "/predict")
        method = req.query.get("method", "POST").upper()
        if not path.startswith("/"):
            return _json({"error": f"path must start with '/', got {path!r}"}, 400)
        headers = {k.lower(): v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP}
        query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
        outcome = await self.proxy.forward(
            rid, Request(method=method, path=path, headers=headers, query=query), await req.read()
        )
        out_headers = {
            "X-Lab-Backend": outcome.backend,
            "X-Lab-Pod": outcome.pod,
            "X-Lab-Rule": "" if outcome.rule is None else str(outcome.rule),
        }
        if outcome.error:
            out_headers["X-Lab-Error"] = outcome.error[:500].replace("\n", " ")
        return web.Response(
            status=outcome.status,
            body=outcome.body,
            headers={**out_headers, "Content-Type": outcome.content_type},
        )

    async def show_route(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        try:
            table = self.proxy.directory.route(rid.kind, rid.namespace, rid.name)
        except RouteNotFound as exc:
            return _json({"error": str(exc)}, 404)
        except RouteError as exc:
            return _json({"error": str(exc)}, 422)
        services = {(b.namespace, b.service) for r in table.rules for b in r.backends}
        services |= {(m.namespace, m.service) for r in table.rules for m in r.mirrors}
        endpoints = {
            f"{ns}/{svc}": [dataclasses.asdict(e) for e in self.proxy.directory.endpoints(ns, svc)]
            for ns, svc in sorted(services)
        }
        return _json({**dataclasses.asdict(table), "endpoints": endpoints})

    async def all_stats(self, _req: web.Request) -> web.Response:
        return _json({"routes": [s.as_dict(rid) for rid, s in self.proxy.stats.items()]})

    async def get_stats(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        return _json(self.proxy.route_stats(rid).as_dict(rid))

    async def reset_stats(self, req: web.Request) -> web.Response:
        rid = _route_id(req)
        before = self.proxy.route_stats(rid).as_dict(rid)
        self.proxy.reset_stats(rid)
        return _json(before)

    async def _shutdown(self, _app: web.Application) -> None:
        for job in list(self.loads.values()):
            await job.stop()
        self.loads.clear()
        await self.proxy.close()


async def serve(directory: Directory, port: int, targets_file: Path | None) -> None:
    """Run the gateway until cancelled (SIGTERM/SIGINT)."""
    registry = CollectorRegistry()
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=64, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        proxy = Proxy(directory, session, registry=registry)
        gw = GatewayApp(proxy, registry)
        runner = web.AppRunner(gw.build(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, statefiles.LOOPBACK, port, reuse_address=True)
        await site.start()
        if targets_file is not None:
            statefiles.write_json_atomic(targets_file, statefiles.gateway_targets(port))
        log.info("gateway listening on %s:%d", statefiles.LOOPBACK, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("gateway stopping")
            if targets_file is not None:
                targets_file.unlink(missing_ok=True)
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.lab.gateway", description="The lab gateway (see the module doc)."
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="the lab's .lab directory")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if not args.kubeconfig.is_file():
        parser.error(f"--kubeconfig {args.kubeconfig} does not exist")
    stop = threading.Event()
    directory = KubeDirectory(api_client(args.kubeconfig), args.state_dir, stop)
    directory.start()
    targets = args.state_dir / statefiles.TARGETS_DIR / statefiles.GATEWAY_TARGETS
    try:
        asyncio.run(serve(directory, args.port, targets))
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
