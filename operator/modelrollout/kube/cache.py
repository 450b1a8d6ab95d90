"""A watch-fed, read-mostly cache of what the operator reads on every tick: its own Deployments
and Services, and the route objects (HTTPRoutes, VirtualServices) of the watched namespaces.

Every tick of every rollout reads the route and both slot Deployments (readiness) and, for each
slot it re-asserts, that slot's Service and Deployment again: seven GETs a tick, most of the
operator's CPU and of its apiserver load at a few hundred rollouts (docs/performance.md). One
list+watch per kind (per watched namespace, or cluster-wide; the operator's own objects by the
label it puts on them) keeps them in memory instead.

Consistency: the cache trails the apiserver by the watch latency (milliseconds). It is only
used where a stale answer is harmless and healed by the next tick:

- observing a slot or a route (a change shows one tick later at worst);
- deciding that a slot needs no write (an object that already matches is left alone).

A miss is always confirmed with a GET, so an object is only ever created after the apiserver
said it does not exist; a route is always read fresh before it is patched (the patch carries a
resourceVersion test). Before a kind's first list completes, after a watch broke, or while its
CRD is not installed, every read misses and falls back to a GET.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from modelrollout.kube.decoding import Report, Undecodable, decode_document, decode_event
from modelrollout.kube.workloads import LABEL_ROLLOUT, readiness_changed

log = structlog.get_logger("modelrollout.cache")

Obj = dict[str, Any]
Key = tuple[str, str]
Kind = tuple[str, str, str]
"""(group, version, plural)."""
DEPLOYMENTS: Kind = ("apps", "v1", "deployments")
SERVICES: Kind = ("", "v1", "services")
WATCH_TIMEOUT_S = 300
MAX_BACKOFF_S = 30.0
ABSENT_BACKOFF_S = 60.0  # a route CRD that is not installed (yet): look again now and then


def _undecodable(lost: Undecodable) -> None:
    """An object of a watched kind that cannot be decoded (kube/decoding.py) is left out of the
    cache: reads of it miss and fall back to a GET, which fails for that rollout only."""
    log.warning(
        "object cannot be decoded; left out of the cache",
        kind=lost.kind, namespace=lost.namespace, name=lost.name, reason=lost.reason,
    )  # fmt: skip


class _Relist(Exception):
    """The watch cannot resume (410 Gone): list again."""


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _trim(obj: Obj, kind: Kind | None = None) -> Obj:
    """Drop what no reader of the cache uses: managedFields (a third of a Deployment's size)
    and, of a Deployment, its pod's spec (containers, volumes, probes: most of the rest).
    Readers of a cached Deployment look at its replicas, its template's metadata (the model
    identity) and its status; every write of the template sends it whole, never a cached copy
    (docs/performance.md: memory)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    spec = obj.get("spec")
    if kind == DEPLOYMENTS and isinstance(spec, dict) and isinstance(spec.get("template"), dict):
        spec["template"] = {"metadata": spec["template"].get("metadata") or {}}
    return obj


class _Watch:
    """One list+watch loop (one kind, one namespace or all) in a daemon thread."""

    def __init__(
        self,
        kind: Kind,
        list_func: Callable[..., Any],
        store: dict[Key, Obj],
        stop: threading.Event,
        namespace: str | None,
        selector: str | None = LABEL_ROLLOUT,
        on_event: Callable[[Obj | None, Obj | None], None] | None = None,
        lock: threading.Lock | None = None,
        report: Report = _undecodable,
    ) -> None:
        self.kind = kind
        self._report = report
        self._lock = lock or threading.Lock()
        self._on_event = on_event
        self.namespace = namespace
        self._list = list_func
        self._store = store
        self._stop = stop
        self._live = False
        self._selector = {"label_selector": selector} if selector else {}
        self._thread = threading.Thread(
            target=self._run, name=f"cache-{kind[2]}-{namespace or 'all'}", daemon=True
        )

    @property
    def live(self) -> bool:
        """The initial list is done and the watch has not broken since."""
        return self._live

    def start(self) -> None:
        self._thread.start()

    def _owns(self, key: Key) -> bool:
        return self.namespace is None or key[0] == self.namespace

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                rv = self._relist()
                failures = 0
                while not self._stop.is_set():
                    rv = self._watch(rv)
            except _Relist:
                log.debug("watch expired; listing again", kind=self.kind)
            except Exception as exc:
                self._live = False
                failures += 1
                absent = isinstance(exc, ApiException) and exc.status == 404
                delay = ABSENT_BACKOFF_S if absent else min(2.0 ** (failures - 1), MAX_BACKOFF_S)
                (log.debug if absent and failures > 1 else log.warning)(
                    "cache watch failed; reading from the apiserver meanwhile",
                    kind="/".join(self.kind),
                    namespace=self.namespace,
                    error=f"HTTP {exc.status}" if isinstance(exc, ApiException) else str(exc)[:300],
                    retry_in_s=delay,
                )
                self._stop.wait(delay)

    def _relist(self) -> str:
        self._live = False
        resp = self._list(**self._selector, _preload_content=False, _request_timeout=(10, 60))
        doc = decode_document(resp.data, self._report)
        fresh = {_key(item): _trim(item, self.kind) for item in doc.get("items") or []}
        with self._lock:
            gone = {k: self._store[k] for k in self._store if self._owns(k) and k not in fresh}
            held = {k: self._store.get(k) for k in fresh}
            for key in gone:
                self._store.pop(key, None)
            self._store.update(fresh)
        self._live = True
        if self._on_event is not None:
            # What changed while the watch was down is told like a watch event would have.
            changes: list[tuple[Obj | None, Obj | None]] = [(old, None) for old in gone.values()]
            changes += [(held[k], new) for k, new in fresh.items() if held[k] is not new]
            for before, after in changes:
                try:
                    self._on_event(before, after)
                except Exception:
                    log.warning("cache event callback failed", exc_info=True)
        return str(doc["metadata"]["resourceVersion"])

    def _events(self, rv: str) -> Iterator[Obj]:
        resp = self._list(
            **self._selector,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
            _request_timeout=(10, WATCH_TIMEOUT_S + 30),
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if line:
                    yield decode_event(line, self._report)
        finally:
            resp.release_conn()

    def _watch(self, rv: str) -> str:
        for event in self._events(rv):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Relist()
                raise ApiException(status=obj.get("code"), reason=obj.get("message"))
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            after: Obj | None = None
            with self._lock:
                before = self._store.get(_key(obj))
                if kind == "DELETED":
                    self._store.pop(_key(obj), None)
                    before = before or obj
                elif kind in ("ADDED", "MODIFIED"):
                    after = self._store[_key(obj)] = _trim(obj, self.kind)
            if self._on_event is not None and kind in ("ADDED", "MODIFIED", "DELETED"):
                try:
                    # after the store: a woken reader sees this version
                    self._on_event(before, after)
                except Exception:
                    log.warning("cache event callback failed", exc_info=True)
            if self._stop.is_set():
                break
        return rv


class ObjectCache:
    """The operator's Deployments and Services, and the route objects, kept up to date by watches.

    ``namespaces`` empty means cluster-wide. ``routes`` are the (group, version, plural) of the
    route kinds to watch (all objects, not only labelled ones: the user owns them). Returned
    objects are shared: read them, never modify them.

    :attr:`on_workload_change` (set it before :meth:`start`) is called from the watch threads
    with (namespace, rollout name) whenever one of a rollout's Deployments changes what the
    engine sees of it (exists, version, replicas, ready replicas, rolled out: not every status
    update on the way), so the rollout can look at its readiness at once instead of polling.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespaces: Sequence[str] = (),
        routes: Sequence[Kind] = (),
    ) -> None:
        # A client of its own: the watches hold their connections for minutes, and must not
        # take them from the pool the reconciler's calls use.
        own = k8s.ApiClient(api_client.configuration)
        apps, core, custom = k8s.AppsV1Api(own), k8s.CoreV1Api(own), k8s.CustomObjectsApi(own)
        self._stop = threading.Event()
        self.on_workload_change: Callable[[str, str], None] | None = None
        self.on_route_change: Callable[[str, str], None] | None = None
        # (kind, namespace, route name) -> the rollouts whose traffic that route carries
        self._route_followers: dict[tuple[Kind, str, str], frozenset[str]] = {}
        self._followed_kinds: set[Kind] = set()
        # Routes the operator is writing right now: their events wait for the write's answer.
        self._writing: dict[tuple[Kind, str, str], _InFlight] = {}
        self._writing_lock = threading.Lock()
        kinds = [DEPLOYMENTS, SERVICES, *routes]
        self._stores: dict[Kind, dict[Key, Obj]] = {kind: {} for kind in kinds}
        self._locks: dict[Kind, threading.Lock] = {kind: threading.Lock() for kind in kinds}
        self._watches: dict[Kind, list[_Watch]] = {kind: [] for kind in kinds}
        scopes: list[str | None] = [*namespaces] or [None]
        for scope in scopes:
            ns = (scope,) if scope is not None else ()
            funcs: dict[Kind, Callable[..., Any]] = {
                DEPLOYMENTS: _bind(apps.list_namespaced_deployment, *ns)
                if ns
                else apps.list_deployment_for_all_namespaces,
                SERVICES: _bind(core.list_namespaced_service, *ns)
                if ns
                else core.list_service_for_all_namespaces,
            }
            for group, version, plural in routes:
                funcs[(group, version, plural)] = (
                    _bind(custom.list_namespaced_custom_object, group, version, *ns, plural)
                    if ns
                    else _bind(custom.list_cluster_custom_object, group, version, plural)
                )
            for kind, func in funcs.items():
                selector = LABEL_ROLLOUT if kind in (DEPLOYMENTS, SERVICES) else None
                on_event = (
                    self._workload_changed
                    if kind == DEPLOYMENTS
                    else None
                    if kind == SERVICES
                    else functools.partial(self._route_changed, kind)
                )
                self._watches[kind].append(
                    _Watch(
                        kind,
                        func,
                        self._stores[kind],
                        self._stop,
                        scope,
                        selector,
                        on_event,
                        self._locks[kind],
                    )
                )

    def _workload_changed(self, before: Obj | None, after: Obj | None) -> None:
        if not readiness_changed(before, after):
            return
        meta = (after or before or {}).get("metadata") or {}
        rollout = (meta.get("labels") or {}).get(LABEL_ROLLOUT)
        if rollout and self.on_workload_change is not None:
            self.on_workload_change(str(meta.get("namespace") or ""), str(rollout))

    def start(self) -> ObjectCache:
        for watches in self._watches.values():
            for watch in watches:
                watch.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def follow_route(self, kind: Kind, namespace: str, name: str, rollout: str) -> None:
        """Tell :attr:`on_route_change` about changes of this route to ``rollout``."""
        key = (kind, namespace, name)
        followers = self._route_followers.get(key, frozenset())
        if rollout not in followers:
            self._route_followers[key] = followers | {rollout}
            self._followed_kinds.add(kind)

    def forget_rollout(self, namespace: str, rollout: str) -> None:
        for key, followers in list(self._route_followers.items()):
            if key[1] == namespace and rollout in followers:
                self._route_followers[key] = followers - {rollout}

    def _route_changed(self, kind: Kind, before: Obj | None, after: Obj | None) -> None:
        """A route changed: wake the rollouts it carries, unless it is the version the
        operator wrote itself (:meth:`offer` stored it already) or only its status changed."""
        meta = (after or before or {}).get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        followers = self._route_followers.get((kind, namespace, name))
        if not followers or self.on_route_change is None:
            return
        if (
            before is not None
            and after is not None
            and (_version(before) == _version(after) or before.get("spec") == after.get("spec"))
        ):
            return
        with self._writing_lock:
            in_flight = self._writing.get((kind, namespace, name))
            if in_flight is not None:
                # Most likely our own write, seen before its answer came back: the answer's
                # resourceVersion tells (:meth:`own_write`).
                in_flight.seen.add(str(_version(after or before or {})))
                return
        self._wake_followers(kind, namespace, name)

    def _wake_followers(self, kind: Kind, namespace: str, name: str) -> None:
        on_change = self.on_route_change
        for rollout in self._route_followers.get((kind, namespace, name), frozenset()):
            if on_change is not None:
                on_change(namespace, rollout)

    @contextmanager
    def own_write(self, kind: Kind, namespace: str, name: str) -> Iterator[Callable[[Obj], None]]:
        """Around the operator's own write of a route: ``with cache.own_write(...) as answer:
        answer(patch_response)``. The watch often brings the write's event before the PATCH
        returns; then it cannot be told from someone else's edit by the object it replaces, and
        woke the rollout for nothing (nearly once per route write under load). Events of the
        route while the write is in flight wait; when it ends, the rollouts are woken only if
        one of them was not a version the operator wrote. The answer goes into the cache
        (:meth:`offer`)."""
        key = (kind, namespace, name)
        with self._writing_lock:
            in_flight = self._writing.get(key)
            if in_flight is None:
                in_flight = self._writing[key] = _InFlight()
            in_flight.writers += 1

        def answer(obj: Obj) -> None:
            with self._writing_lock:
                in_flight.ours.add(str(_version(obj)))
            self.offer(kind, obj)

        try:
            yield answer
        finally:
            with self._writing_lock:
                in_flight.writers -= 1
                done = in_flight.writers == 0
                if done:
                    del self._writing[key]
                others = done and bool(in_flight.seen - in_flight.ours)
            if others:
                self._wake_followers(kind, namespace, name)

    def watches_everything(self) -> bool:
        """Whether a change of any object a settled rollout depends on (its Deployments, its
        route) wakes it now: then it needs only a rare look of its own."""
        return (
            self.wakes_on_workload_change()
            and self.on_route_change is not None
            and all(self.live(kind) for kind in self._followed_kinds)
        )

    def wakes_on_workload_change(self) -> bool:
        """Whether a change of a rollout's Deployment wakes it now: someone listens and the
        Deployments' watches are live (while one is broken, a change goes unnoticed)."""
        return self.on_workload_change is not None and self.live(DEPLOYMENTS)

    def live(self, kind: Kind) -> bool:
        watches = self._watches.get(kind) or []
        return bool(watches) and all(w.live for w in watches)

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        """The cached object, or None (not cached yet, absent, not watched, or not live)."""
        if not self.live(kind):
            return None
        return self._stores[kind].get((namespace, name))

    def offer(self, kind: Kind, obj: Obj) -> None:
        """An object as the apiserver returned it from the operator's own write (the cache takes
        it over: do not modify it afterwards): stored unless
        the cache already holds that version or a newer one. The next tick then reads back
        what was written even while the watch lags (under load, by seconds: each tick until
        it caught up saw a route that had not converged and looked again 1 s later)."""
        store = self._stores.get(kind)
        version = _version(obj)
        if store is None or version is None:
            return
        key = _key(obj)
        with self._locks[kind]:
            held = store.get(key)
            if held is not None and not older(_version(held), str(version)):
                return  # the watch's copy wins when versions cannot be compared
            store[key] = _trim(obj, kind)

    def __len__(self) -> int:
        return sum(len(store) for store in self._stores.values())


@dataclass
class _InFlight:
    """The operator's writes of one route under way, and the versions the watch brought."""

    writers: int = 0
    seen: set[str] = field(default_factory=set)
    ours: set[str] = field(default_factory=set)


def _version(obj: Obj) -> Any:
    return (obj.get("metadata") or {}).get("resourceVersion")


def older(version: Any, than: str) -> bool:
    """Whether resourceVersion ``version`` is older than ``than``. They are etcd revisions
    (decimal integers) on every apiserver we know; anything else is never called older."""
    try:
        return int(str(version)) < int(than)
    except ValueError:
        return False


def _bind(func: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call
