"""A small list+watch loop over the kubernetes python client, on plain dicts.

``Informer`` lists a resource, hands the full list to ``on_sync``, then watches from the list's
resourceVersion and hands every ADDED/MODIFIED/DELETED event to ``on_event``. When the watch ends
it resumes from the last resourceVersion; on 410 Gone or any error it lists again (after a short
back-off on errors). It runs in a daemon thread until ``stop`` is set.

``Store`` is the cache most users want: a thread-safe dict of the objects by (namespace, name).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

Obj = dict[str, Any]
ListFunc = Callable[..., Any]
log = logging.getLogger(__name__)


class _Relist(Exception):
    """The watch cannot resume (410 Gone): list again."""


def key_of(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    def __init__(
        self,
        name: str,
        list_func: ListFunc,
        *,
        on_sync: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        stop: threading.Event,
        watch_timeout_s: int = 120,
        error_backoff_s: float = 1.0,
        **list_kwargs: Any,
    ) -> None:
        self.name = name
        self._list = list_func
        self._on_sync = on_sync
        self._on_event = on_event
        self._stop = stop
        self._watch_timeout_s = watch_timeout_s
        self._backoff_s = error_backoff_s
        self._kwargs = list_kwargs
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                rv = self._relist()
                failures = 0
                while not self._stop.is_set():
                    rv = self._watch(rv)
            except _Relist:
                log.info("%s: watch expired, listing again", self.name)
            except Exception as exc:
                failures += 1
                delay = min(self._backoff_s * 2 ** min(failures - 1, 4), 15.0)
                if failures <= 3 or failures % 20 == 0:
                    log.warning(
                        "%s: list/watch failed %d time(s) (%s); retrying in %.0fs",
                        self.name,
                        failures,
                        _short(exc),
                        delay,
                    )
                self._stop.wait(delay)

    def _relist(self) -> str:
        resp = self._list(**self._kwargs, _preload_content=False, _request_timeout=(5, 60))
        doc = json.loads(resp.data)
        items: list[Obj] = doc.get("items") or []
        self._on_sync(items)
        self.synced.set()
        return str(doc["metadata"]["resourceVersion"])

    def _events(self, rv: str) -> Iterator[Obj]:
        resp = self._list(
            **self._kwargs,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _preload_content=False,
            _request_timeout=(5, self._watch_timeout_s + 30),
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if line:
                    yield json.loads(line)
        finally:
            resp.close()
            resp.release_conn()

    def _watch(self, rv: str) -> str:
        """Watch from ``rv`` until the server ends the watch; return the last resourceVersion."""
        for event in self._events(rv):
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                if obj.get("code") == 410:
                    raise _Relist()
                raise ApiException(status=obj.get("code"), reason=obj.get("message"))
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self._on_event(str(etype), obj)
            if self._stop.is_set():
                break
        return rv


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."


class Store:
    """Thread-safe cache of one resource kind, fed by an Informer."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._objs: dict[tuple[str, str], Obj] = {}
        self._on_change = on_change

    def sync(self, items: list[Obj]) -> None:
        with self._lock:
            self._objs = {key_of(o): o for o in items}
        self._changed()

    def event(self, etype: str, obj: Obj) -> None:
        with self._lock:
            if etype == "DELETED":
                self._objs.pop(key_of(obj), None)
            else:
                self._objs[key_of(obj)] = obj
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objs.get((namespace, name))

    def list(self, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            if namespace is None:
                return list(self._objs.values())
            return [o for (ns, _), o in self._objs.items() if ns == namespace]


def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=cfg
    )
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)
