"""Whether the operator can do its job: what ``/healthz`` answers, and the exit when it cannot.

Three things are judged, each from facts recorded as they happen:

- **the event loop** beats once a second (:meth:`Liveness.beat`, from a task on the loop); a
  loop blocked by anything (a synchronous call, a runaway computation) stops beating. The
  judgement runs on the metrics server's thread, so a stuck loop is *reported*, not just a
  probe that hangs (kopf's own liveness endpoint runs on the loop it would have to judge);
- **the watches**: kopf's watch requests pass through :meth:`Liveness.track_watches`, a
  middleware of the session the operator gives kopf; a watch whose reconnects keep failing
  (apiserver unreachable, 5xx, RBAC) is down from its first failure until one succeeds;
- **reconciles**: each tick is due from the moment its daemon wakes until it completes
  (:meth:`Liveness.due`, :meth:`Liveness.done`); the operator is stuck when work has been due
  longer than the limit and no reconcile at all completed meanwhile. One slow rollout does not
  count against the others as long as they complete.

:class:`Watchdog` exits the process (:data:`EXIT_UNHEALTHY`) once it has been unhealthy for
``exit_after_s``: a process that cannot do its job must not idle, with or without a kubelet
watching its probe.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog

log = structlog.get_logger("modelrollout.health")

EXIT_UNHEALTHY: Final = 70
"""The exit status of an operator that stopped being able to do its job (EX_SOFTWARE)."""
BEAT_S: Final = 1.0


@dataclass(frozen=True)
class Limits:
    """How long each failure is tolerated before the operator counts as unhealthy (seconds)."""

    loop_stall_s: float = 30.0
    watch_down_s: float = 120.0
    reconcile_stall_s: float = 300.0
    exit_after_s: float = 60.0
    """Unhealthy this long, the process exits; 0: never (the probe alone decides)."""


class Liveness:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._last_beat = clock()
        self._watch_down: dict[str, float] = {}
        self._due: dict[Hashable, float] = {}
        self._last_done = clock()
        self._lock = threading.Lock()

    # -- the loop

    def beat(self) -> None:
        self._last_beat = self._clock()

    async def heartbeat(self) -> None:
        """Beat for as long as the loop runs (a task of its own)."""
        while True:
            self.beat()
            await asyncio.sleep(BEAT_S)

    # -- watches

    def watch_connected(self, watch: str) -> None:
        with self._lock:
            self._watch_down.pop(watch, None)

    def watch_failed(self, watch: str) -> None:
        with self._lock:
            self._watch_down.setdefault(watch, self._clock())

    def track_watches(self) -> aiohttp.ClientMiddlewareType:
        """A session middleware recording whether each watch request connected."""

        async def middleware(
            request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            if request.url.query.get("watch") not in ("true", "1"):
                return await handler(request)
            watch = request.url.path
            try:
                response = await handler(request)
            except (aiohttp.ClientError, TimeoutError):
                self.watch_failed(watch)
                raise
            if response.status == 200:
                self.watch_connected(watch)
            else:
                self.watch_failed(watch)
            return response

        return middleware

    # -- reconciles

    def due(self, key: Hashable) -> None:
        with self._lock:
            self._due.setdefault(key, self._clock())

    def done(self, key: Hashable) -> None:
        with self._lock:
            self._due.pop(key, None)
            self._last_done = self._clock()

    def forget(self, key: Hashable) -> None:
        """The rollout's daemon ended (deleted, or the operator stops): nothing is due for it."""
        with self._lock:
            self._due.pop(key, None)

    # -- the verdict

    def problems(self) -> list[str]:
        """Why the operator cannot do its job right now; empty when it can."""
        now, limits = self._clock(), self.limits
        found: list[str] = []
        stalled = now - self._last_beat
        if stalled > limits.loop_stall_s:
            found.append(f"event loop blocked for {stalled:.0f}s")
        with self._lock:
            down = sorted((since, watch) for watch, since in self._watch_down.items())
            oldest_due = min(self._due.items(), key=lambda kv: kv[1], default=None)
            last_done = self._last_done
        for since, watch in down:
            if now - since > limits.watch_down_s:
                found.append(f"watch {watch} down for {now - since:.0f}s")
        if oldest_due is not None:
            key, since = oldest_due
            waited, idle = now - since, now - last_done
            if waited > limits.reconcile_stall_s and idle > limits.reconcile_stall_s:
                found.append(
                    f"no reconcile completed for {idle:.0f}s while {key} has been due for "
                    f"{waited:.0f}s ({len(self._due)} due)"
                )
        return found

    def healthy(self) -> bool:
        return not self.problems()


class Watchdog:
    """A daemon thread exiting the process once it has been unhealthy for ``exit_after_s``."""

    def __init__(
        self,
        liveness: Liveness,
        exit_process: Callable[[int], None] = os._exit,
        period_s: float = 1.0,
    ) -> None:
        self._liveness = liveness
        self._exit = exit_process
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self._liveness.limits.exit_after_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        unhealthy_since: float | None = None
        while not self._stop.wait(self._period_s):
            problems = self._liveness.problems()
            if not problems:
                unhealthy_since = None
                continue
            now = time.monotonic()
            unhealthy_since = unhealthy_since or now
            if now - unhealthy_since >= self._liveness.limits.exit_after_s:
                log.error("cannot do its job; exiting", problems=problems, code=EXIT_UNHEALTHY)
                sys.stderr.flush()
                self._exit(EXIT_UNHEALTHY)
                return
