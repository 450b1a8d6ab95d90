"""kopf registrations only: each handler adapts kopf's call to the reconciler.

- one daemon per ModelRollout drives it: reconcile, then sleep until the engine's next due time
  or until the object changes (new spec generation or a manual command), whichever is first;
- a low-level event handler wakes the daemon on such changes (status writes do not wake it);
- a deletion handler leaves the user's route pointing at the stable backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import structlog

from modelrollout.api.models import (
    ANNOTATION_COMMAND,
    GROUP,
    PLURAL,
    VERSION,
    ModelRolloutSpec,
    ModelRolloutStatus,
)
from modelrollout.kube.workloads import slot_name
from modelrollout.reconciler import Reconciler, StaleStatus
from modelrollout.routing import make_router

log = structlog.get_logger("modelrollout.handlers")

RESYNC = timedelta(seconds=30)
ERROR_BACKOFF = timedelta(seconds=2)
STALE_RETRY = timedelta(milliseconds=200)
MAX_CONCURRENT_RECONCILES = 256


@dataclass
class Memo:
    """The operator's shared state, handed to kopf as ``memo``."""

    reconciler: Reconciler | None = None
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    seen: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    # Reconciles in flight at once. When every rollout's stage ends at the same moment, 1,000
    # reconciles at once each held a parsed status, its working copies and a decision: the
    # operator's peak memory. The CPU is the limit then anyway; the rest wait their turn, FIFO.
    reconcile_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_RECONCILES)
    )


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
    wake = memo.wakeups.setdefault(key, asyncio.Event())
    try:
        while not stopped:
            wake.clear()
            async with memo.reconcile_slots:
                delay = await _reconcile_once(memo.reconciler, body, namespace, name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay.total_seconds())
    finally:
        memo.wakeups.pop(key, None)
        memo.seen.pop(key, None)


async def _reconcile_once(
    reconciler: Reconciler, body: kopf.Body, namespace: str | None, name: str
) -> timedelta:
    """One reconcile; how long to sleep before the next. Nothing of the reconcile outlives it:
    the daemon sleeps holding only the delay (it once held the last Decision, a parsed status
    with its audit trail, per rollout between ticks: ~30 MiB at 1,000 rollouts,
    docs/performance.md)."""
    now = _now()
    try:
        decision = await reconciler.reconcile(_plain(body), now)
    except StaleStatus as exc:
        log.debug("body older than our own write; looking again", reason=str(exc))
        return STALE_RETRY
    except Exception:
        log.exception("reconcile failed; retrying", namespace=namespace, rollout=name)
        return ERROR_BACKOFF
    if decision is None or decision.requeue_after is None:
        return RESYNC
    # requeue_after counts from the tick's `now`: the time the reconcile itself took (a slow
    # apiserver) must not push every next look back by as much.
    left = now + decision.requeue_after - _now()
    return min(max(left, timedelta(milliseconds=100)), RESYNC)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wake_on_change(
    body: kopf.Body, name: str, namespace: str | None, memo: Memo, **_: Any
) -> None:
    """Wake the rollout's daemon when its spec or manual command changed (not on status writes).

    Async on purpose: kopf runs a sync handler in a worker thread, and ``asyncio.Event.set()``
    is not thread-safe (the daemon might not wake until the loop wakes for something else).
    """
    key = (namespace or "", name)
    fingerprint = (
        body.metadata.get("generation"),
        (body.metadata.annotations or {}).get(ANNOTATION_COMMAND),
    )
    if memo.seen.get(key) == fingerprint:
        return
    memo.seen[key] = fingerprint
    event = memo.wakeups.get(key)
    if event is not None:
        event.set()


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def release_routes(
    body: kopf.Body, name: str, namespace: str | None, memo: Memo, **_: Any
) -> None:
    """Leave the route serving the stable version; Deployments and Services go with their owner."""
    assert memo.reconciler is not None
    try:
        spec = ModelRolloutSpec.model_validate(dict(body.spec))
    except Exception:
        return  # an invalid rollout never touched traffic
    status = ModelRolloutStatus.model_validate(dict(body.status or {}))
    if status.stable_slot is None:
        return
    router = make_router(memo.reconciler.kube.api_client, namespace or "", name, spec, owner=None)
    await router.finalize(slot_name(name, status.stable_slot))


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }
