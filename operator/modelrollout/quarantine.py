"""Rollouts whose latest version the operator could not decode (:mod:`modelrollout.kube.decoding`).

Such a rollout is held: its daemon does not act on the older version it knows, since that is
no longer what the user asked for. Each undecodable version gets one Warning Event saying why
(through the Events API, which needs only the object's identity); a later version that decodes
releases the rollout. Every other rollout carries on as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from modelrollout.kube.cache import older
from modelrollout.kube.decoding import Undecodable

log = structlog.get_logger("modelrollout.quarantine")

EventSink = Callable[[dict[str, Any], str, str, str], None]
REASON = "Undecodable"
MAX_HELD = 10_000
"""Rollouts remembered at most (a deleted one's entry is dropped when its deletion is seen)."""


class Quarantine:
    def __init__(self, post_event: EventSink, on_report: Callable[[], None] | None = None) -> None:
        self._post_event = post_event
        self._on_report = on_report
        self._held: dict[tuple[str, str], Undecodable] = {}
        self._lock = threading.Lock()  # the watch cache reports from its threads

    def report(self, lost: Undecodable) -> None:
        """An object version that could not be decoded: hold it and say why, once."""
        key = (lost.namespace, lost.name)
        with self._lock:
            if self._held.get(key) == lost:
                return
            if len(self._held) >= MAX_HELD:
                self._held.clear()
            self._held[key] = lost
        log.warning(
            "object cannot be decoded; ignored until it changes",
            kind=lost.kind, namespace=lost.namespace, name=lost.name,
            resource_version=lost.resource_version, reason=lost.reason,
        )  # fmt: skip
        if self._on_report is not None:
            self._on_report()
        message = (
            f"resourceVersion {lost.resource_version} cannot be decoded ({lost.reason}); the "
            "operator ignores it, and holds the rollout, until a version it can read"
        )
        try:
            self._post_event(lost.body(), "Warning", REASON, message)
        except Exception:  # an Event that cannot be posted must not stop decoding
            log.warning("cannot post the Event about an undecodable object", exc_info=True)

    def holds(
        self, namespace: str, name: str, resource_version: Any, *, gone: bool = False
    ) -> bool:
        """Whether this version of the object is superseded by one that could not be decoded.
        A newer version (it decoded) or the object's deletion releases it."""
        key = (namespace, name)
        held = self._held.get(key)
        if held is None:
            return False
        if gone or older(held.resource_version, str(resource_version)):
            with self._lock:
                self._held.pop(key, None)
            return False
        return True

    def __len__(self) -> int:
        return len(self._held)
