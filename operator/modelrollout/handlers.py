"""kopf registrations only: each handler adapts kopf's call to the reconciler.

- one daemon per ModelRollout drives it: reconcile, then sleep until the engine's next due time
  or until the object changes (new spec generation or a manual command), whichever is first;
- a low-level event handler wakes the daemon on such changes (status writes do not wake it,
  except the one a deferred tick waits for: its own last write coming back through the watch);
- a deletion handler leaves the user's route pointing at the stable backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import kopf
import structlog

from modelrollout import observability
from modelrollout.api.models import (
    ANNOTATION_COMMAND,
    GROUP,
    PLURAL,
    VERSION,
    ModelRolloutSpec,
    ModelRolloutStatus,
)
from modelrollout.health import Liveness
from modelrollout.kube.cache import older
from modelrollout.kube.workloads import slot_name
from modelrollout.quarantine import Quarantine
from modelrollout.reconciler import Reconciler, StaleStatus
from modelrollout.routing import make_router

log = structlog.get_logger("modelrollout.handlers")

RESYNC = timedelta(seconds=30)
SETTLED_RESYNC = timedelta(minutes=5)
"""How often a settled rollout is looked at while every change of its Deployments and route
wakes it anyway (the watches are live): at 1,000 settled rollouts, RESYNC alone was 33
reconciles a second that found nothing to do."""
ERROR_BACKOFF = timedelta(seconds=2)
CATCH_UP_WAIT = timedelta(seconds=2)
"""The longest a tick waits for the watch to deliver the operator's own last status write."""
MAX_CONCURRENT_RECONCILES = 256


class Trigger(StrEnum):
    """Why a daemon looks again (the ``trigger`` label of ``modelrollout_reconciles_total``),
    besides the time the engine asked for, which counts under what it waits for (an
    :class:`~modelrollout.engine.types.Wake`: analysis, stage-end, readiness, converge, ...)."""

    START = "start"  # the daemon started: the operator started or the rollout appeared
    CHANGE = "change"  # a new spec generation or a manual command
    WORKLOAD = "workload"  # one of its Deployments changed what the engine sees of it
    ROUTE = "route"  # someone else changed its route
    CAUGHT_UP = "caught-up"  # its own last status write came back through the watch
    RETRY = "retry"  # after an error, or a deferred tick whose write did not come back in time
    RESYNC = "resync"  # settled, nothing due: a periodic look (drift of the route or slots)


class Next(NamedTuple):
    """What a daemon keeps of a reconcile while it sleeps."""

    delay: timedelta
    why: str  # the trigger if the delay runs out (a Wake or a Trigger)
    awaited_version: str | None = None  # the body lagged our write: wait for this version


class Wakeup:
    """A sleeping daemon's alarm clock: anyone with a reason for it to look now sets it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None
        # The resourceVersion a deferred tick waits for (its own last status write), or None.
        self.awaited_version: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = None

    async def sleep(self, delay: timedelta, otherwise: str) -> str:
        """Sleep ``delay`` unless set first; the reason to look again. A timer that sets the
        alarm itself, not ``asyncio.wait_for``: that (Python 3.11) wraps the wait in a task of
        its own and cancels it on every timeout, per sleeping rollout."""
        timer = asyncio.get_running_loop().call_later(
            max(delay.total_seconds(), 0.0), self.set, otherwise
        )
        try:
            await self._event.wait()
        finally:
            timer.cancel()
        return self.reason or otherwise


@dataclass
class Memo:
    """The operator's shared state, handed to kopf as ``memo``."""

    reconciler: Reconciler | None = None
    wakeups: dict[tuple[str, str], Wakeup] = field(default_factory=dict)
    seen: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    # Reconciles in flight at once. When every rollout's stage ends at the same moment, 1,000
    # reconciles at once each held a parsed status, its working copies and a decision: the
    # operator's peak memory. The CPU is the limit then anyway; the rest wait their turn, FIFO.
    # A tick's gate and Prometheus calls are made before it takes its slot (Reconciler.reconcile).
    reconcile_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_RECONCILES)
    )
    # Rollouts whose latest version could not be decoded: not acted on until one can be.
    quarantine: Quarantine | None = None
    # What /healthz judges: each tick is due from its wake-up until it completes.
    liveness: Liveness | None = None


def _now() -> datetime:
    return datetime.now(UTC)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def drive(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    stopped: kopf.DaemonStopped,
    memo: Memo,
    **_: Any,
) -> None:
    """Drive one rollout for as long as it exists."""
    assert memo.reconciler is not None
    key = (namespace or "", name)
    wake = memo.wakeups.setdefault(key, Wakeup())
    metrics = observability.METRICS
    trigger: str = Trigger.START
    try:
        while not stopped:
            wake.clear()
            if memo.quarantine is not None and memo.quarantine.holds(
                *key, body.metadata.get("resourceVersion")
            ):
                # Its latest version could not be decoded: the body here is an older one.
                trigger = await wake.sleep(RESYNC, Trigger.RESYNC)
                continue
            metrics.reconcile_started(trigger)
            if memo.liveness is not None:
                memo.liveness.due(key)
            slot = _slot(memo.reconcile_slots)
            after = await _reconcile_once(memo.reconciler, body, namespace, name, slot)
            if memo.liveness is not None:
                memo.liveness.done(key)
            if after.awaited_version is not None:
                # The body is older than our own last write: wait, outside the slot, for the
                # watch to deliver it (wake_on_change sees it arrive) instead of polling for it.
                metrics.reconcile_deferred()
                wake.awaited_version = after.awaited_version
                if _caught_up(body, after.awaited_version):
                    wake.set(Trigger.CAUGHT_UP)  # it arrived while we were finding out
            trigger = await wake.sleep(after.delay, after.why)
            wake.awaited_version = None
    finally:
        memo.wakeups.pop(key, None)
        memo.seen.pop(key, None)
        if memo.liveness is not None:
            memo.liveness.forget(key)


@asynccontextmanager
async def _slot(slots: asyncio.Semaphore) -> AsyncIterator[None]:
    """A reconcile slot, its wait observed."""
    queued = time.perf_counter()
    async with slots:
        observability.METRICS.reconcile_queue.observe(time.perf_counter() - queued)
        yield


async def _reconcile_once(
    reconciler: Reconciler,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    slot: AbstractAsyncContextManager[None] | None = None,
) -> Next:
    """One reconcile: how long to sleep before the next and why, and the resourceVersion to
    wait for if the body was older than the operator's own last status write. Nothing of the
    reconcile outlives it: the daemon sleeps holding only these (it once held the last
    Decision, a parsed status with its audit trail, per rollout between ticks: ~30 MiB at
    1,000 rollouts, docs/performance.md)."""
    now = _now()
    try:
        # the slot is taken after the tick's gate and Prometheus calls, which hold none
        decision = await reconciler.reconcile(_plain(body), now, slot)
    except StaleStatus as exc:
        log.debug("body older than our own write; waiting for it", reason=str(exc))
        return Next(CATCH_UP_WAIT, Trigger.RETRY, exc.written)
    except Exception:
        log.exception("reconcile failed; retrying", namespace=namespace, rollout=name)
        return Next(ERROR_BACKOFF, Trigger.RETRY)
    if decision is None:
        return Next(RESYNC, Trigger.RESYNC)
    if decision.requeue_after is None:
        return Next(SETTLED_RESYNC if reconciler.watches_everything() else RESYNC, Trigger.RESYNC)
    # requeue_after counts from the tick's `now`: the time the reconcile itself took (a slow
    # apiserver) must not push every next look back by as much.
    left = now + decision.requeue_after - _now()
    why = decision.requeue_reason or Trigger.RESYNC
    return Next(min(max(left, timedelta(milliseconds=100)), RESYNC), why)


def _caught_up(body: kopf.Body | dict[str, Any], awaited: str) -> bool:
    return not older(body.get("metadata", {}).get("resourceVersion"), awaited)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wake_on_change(
    body: kopf.Body, name: str, namespace: str | None, memo: Memo, **rest: Any
) -> None:
    """Wake the rollout's daemon when its spec or manual command changed, or someone else
    changed its status (not on the operator's own status writes, except the one a deferred tick
    waits for).

    Async on purpose: kopf runs a sync handler in a worker thread, and ``asyncio.Event.set()``
    is not thread-safe (the daemon might not wake until the loop wakes for something else).
    """
    key = (namespace or "", name)
    if memo.quarantine is not None:  # a version that decoded releases a held rollout
        deleted = rest.get("type") == "DELETED"
        memo.quarantine.holds(*key, body.metadata.get("resourceVersion"), gone=deleted)
    wake = memo.wakeups.get(key)
    awaited = wake.awaited_version if wake is not None else None
    if wake is not None and awaited is not None and _caught_up(body, awaited):
        wake.awaited_version = None
        wake.set(Trigger.CAUGHT_UP)
    fingerprint = (
        body.metadata.get("generation"),
        (body.metadata.annotations or {}).get(ANNOTATION_COMMAND),
    )
    if memo.seen.get(key) == fingerprint:
        reconciler = memo.reconciler
        if wake is not None and reconciler is not None and reconciler.changed_by_others(body):
            wake.set(Trigger.CHANGE)  # someone else edited or wiped the status
        return
    memo.seen[key] = fingerprint
    if wake is not None:
        wake.set(Trigger.CHANGE)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def release_routes(
    body: kopf.Body, name: str, namespace: str | None, memo: Memo, **_: Any
) -> None:
    """Leave the route serving the stable version; Deployments and Services go with their owner.
    The rollout's own metric series go with it."""
    assert memo.reconciler is not None
    observability.forget(namespace or "", name)
    try:
        spec = ModelRolloutSpec.model_validate(dict(body.spec))
    except Exception:
        return  # an invalid rollout never touched traffic
    status = ModelRolloutStatus.model_validate(dict(body.status or {}))
    if status.stable_slot is None:
        return
    cache = getattr(memo.reconciler.kube, "cache", None)
    if cache is not None:
        cache.forget_rollout(namespace or "", name)
    router = make_router(memo.reconciler.kube.api_client, namespace or "", name, spec, owner=None)
    await router.finalize(slot_name(name, status.stable_slot))


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }
