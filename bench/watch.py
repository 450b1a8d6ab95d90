"""What the bench sees, with when it saw it: every ModelRollout and every HTTPRoute of a run.

Two list+watch loops (:class:`e2e.lab.informer.Informer`, one thread each) over the objects
labelled with the run's id. The rollouts' latest versions are kept; every version of a route
whose managed rule changed is appended to that route's log with the time it arrived, and every
status write of a rollout is classified by cause (:func:`bench.measure.status_write_cause`) with
the time it arrived.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from kubernetes import client as k8s

from bench.measure import RouteView, route_view, status_write_cause
from e2e.lab.informer import Informer, Obj, Store, key_of

ROLLOUTS = ("modelrollout.dev", "v1alpha1", "modelrollouts")
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
TERMINAL = frozenset({"Succeeded", "RolledBack", "Failed"})


class Recorder:
    """Watches the run's rollouts and routes (label selector ``selector``) until :meth:`stop`."""

    def __init__(self, api_client: k8s.ApiClient, selector: str) -> None:
        custom = k8s.CustomObjectsApi(api_client)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.rollouts = Store()
        self.routes: dict[tuple[str, str], list[RouteView]] = {}
        self.status_writes: list[tuple[float, str]] = []  # (seen, cause)
        self._informers = [
            Informer(
                "bench-rollouts",
                functools.partial(custom.list_cluster_custom_object, *ROLLOUTS),
                on_sync=self.rollouts.sync,
                on_event=self._rollout_event,
                stop=self._stop,
                label_selector=selector,
            ),
            Informer(
                "bench-routes",
                functools.partial(custom.list_cluster_custom_object, *ROUTES),
                on_sync=self._routes_sync,
                on_event=self._route_event,
                stop=self._stop,
                label_selector=selector,
            ),
        ]

    def start(self, timeout: float = 60.0) -> Recorder:
        for informer in self._informers:
            informer.start()
        for informer in self._informers:
            if not informer.synced.wait(timeout):
                raise TimeoutError(f"{informer.name}: no initial list within {timeout:.0f}s")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _rollout_event(self, etype: str, obj: Obj) -> None:
        seen = time.time()
        if etype == "MODIFIED":
            before = self.rollouts.get(*key_of(obj)) or {}
            cause = status_write_cause(before.get("status"), obj.get("status") or {})
            if cause is not None:
                with self._lock:
                    self.status_writes.append((seen, cause))
        self.rollouts.event(etype, obj)

    def status_writes_between(self, t0: float, t1: float) -> dict[str, int]:
        """Status writes seen in ``[t0, t1]``, by cause."""
        with self._lock:
            counted: dict[str, int] = {}
            for seen, cause in self.status_writes:
                if t0 <= seen <= t1:
                    counted[cause] = counted.get(cause, 0) + 1
            return counted

    def _routes_sync(self, items: list[Obj]) -> None:
        for item in items:
            self._route_event("ADDED", item)

    def _route_event(self, etype: str, obj: Obj) -> None:
        seen = time.time()
        if etype == "DELETED":
            return
        view = route_view(seen, obj)
        if view is None:
            return
        with self._lock:
            log = self.routes.setdefault(key_of(obj), [])
            if not log or (log[-1].weights, log[-1].mirror) != (view.weights, view.mirror):
                log.append(view)

    def route_log(self, namespace: str, name: str) -> list[RouteView]:
        with self._lock:
            return list(self.routes.get((namespace, name), []))

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.rollouts.get(namespace, name) or {}
        return dict(obj.get("status") or {})
