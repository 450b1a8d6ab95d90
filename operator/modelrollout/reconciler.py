"""observe -> engine.decide -> apply actions -> status patch.

One call of :meth:`Reconciler.reconcile` is one tick for one ModelRollout. Everything it needs
to resume lives in ``.status``; everything it does is convergent, so a restart at any point
repeats at most a write that is already in place.

Ordering of side effects (what an operator restart between any two of them sees):
1. traffic moving *towards stable* (rollback, supersede, promotion's final switch) first;
2. then the status patch, which commits the decision (stage, counters, history);
3. then everything else: workloads, traffic towards the candidate, scale-downs, events,
   notifications. A crash after (2) is healed by the next tick, which sees the route or the
   Deployment disagree with the committed status and converges them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import structlog
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from modelrollout import engine
from modelrollout.api import validation
from modelrollout.api.models import (
    ANNOTATION_COMMAND,
    ANNOTATION_COMMAND_BY,
    MetricResult,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    SecretKeyRef,
    Verdict,
    WebhookSpec,
    WebhookType,
    parse_duration,
)
from modelrollout.engine.types import (
    Action,
    Command,
    CommandVerb,
    Decision,
    EmitEvent,
    EnsureSlot,
    GateResult,
    Notify,
    Observation,
    RouteState,
    ScaleSlot,
    SetTraffic,
    Slot,
)
from modelrollout.kube.cache import older
from modelrollout.kube.client import KubeClient, SecretNotFound, SlotNotOwned
from modelrollout.kube.workloads import slot_name, slot_state
from modelrollout.metrics import analysis as metric_analysis
from modelrollout.metrics.prometheus import PrometheusProviderFactory
from modelrollout.routing import make_router
from modelrollout.routing.base import DesiredRoutes, RoutingError, TrafficRouter

log = structlog.get_logger("modelrollout.reconciler")

VALIDATED_MAX = 10_000
"""Rollouts whose validation result is remembered (beyond that the memory starts over)."""

EventSink = Callable[[dict[str, Any], str, str, str], None]
"""(body, type, reason, message) -> None: posts a Kubernetes Event about the rollout."""


@dataclass
class OperatorConfig:
    prometheus_url: str | None = None
    history_limit: int = 100


@dataclass(frozen=True)
class CalledOut:
    """What a tick's outbound calls brought back: the analysis run (None: none was due) and
    each gate asked, by name."""

    analysis: list[MetricResult] | None = None
    gates: dict[str, GateResult] = field(default_factory=dict)


@dataclass
class Reconciler:
    kube: KubeClient
    providers: PrometheusProviderFactory
    post_event: EventSink
    config: OperatorConfig = field(default_factory=OperatorConfig)
    notifier: Callable[[dict[str, Any], ModelRolloutSpec, Notify], Awaitable[None]] | None = None
    gate_caller: (
        Callable[
            [dict[str, Any], ModelRolloutSpec, WebhookSpec, ModelRolloutStatus],
            Awaitable[GateResult],
        ]
        | None
    ) = None
    on_decision: Callable[[dict[str, Any], Observation, Decision, float], None] | None = None
    register_secret: Callable[[str], None] | None = None
    router_factory: Callable[..., TrafficRouter] = make_router
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    # (namespace, name) -> (generation, problem): the apiserver refused a slot built from that
    # generation's spec (e.g. an invalid pod template); held as invalid until the spec changes.
    _refused: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    # (namespace, name) -> (uid, generation, problems): validation once per spec generation.
    _validated: dict[tuple[str, str], tuple[str, int, list[str]]] = field(default_factory=dict)
    # (namespace, name) -> (uid, generation, spec): the spec parsed once per generation.
    _specs: dict[tuple[str, str], tuple[str, int, ModelRolloutSpec]] = field(default_factory=dict)
    # (namespace, name) -> (uid, resourceVersion) of the operator's own last status write.
    _written: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # (namespace, name) -> status_fingerprint of the status as this operator last wrote or
    # found it: a watch event with another one is a change by someone else.
    _fingerprints: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    # the fingerprint a status write under way replaces, by rollout
    _replaced: dict[tuple[str, str], tuple[Any, ...] | None] = field(default_factory=dict)
    # (namespace, name) -> resourceVersion of the route when it last served what the status
    # asked: a later version that does not is someone else's edit (Observation.route_edited).
    _route_agreed: dict[tuple[str, str], str] = field(default_factory=dict)

    def _validate(self, body: dict[str, Any], generation: int) -> list[str]:
        """``validation.validate(body)``, computed once per spec generation: it reads only the
        spec and the (immutable) name, and any spec change bumps metadata.generation. It was a
        tenth of the operator's CPU when run on every tick (docs/performance.md)."""
        problems = _once_per_generation(
            self._validated, body, generation, lambda: [str(p) for p in validation.validate(body)]
        )
        return list(problems)

    def _spec(self, body: dict[str, Any], generation: int) -> ModelRolloutSpec:
        """The parsed spec, once per spec generation like :meth:`_validate` (parsing it on every
        tick was a tenth of the operator's CPU at 1,000 rollouts, docs/performance.md). The
        engine never edits the spec, so one parsed copy serves every tick of a generation."""
        return _once_per_generation(
            self._specs,
            body,
            generation,
            lambda: ModelRolloutSpec.model_validate(body.get("spec") or {}),
        )

    def changed_by_others(self, body: Mapping[str, Any]) -> bool:
        """Whether this (watch event's) body carries a status that neither this operator wrote
        nor found on its last tick: someone else edited or wiped it. Status writes wake no
        rollout otherwise, and a settled one looks again only every few minutes."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        known = self._fingerprints.get(key)
        if known is None:
            return False
        written = self._written.get(key)
        version = meta.get("resourceVersion")
        if written is not None and (version == written[1] or older(version, written[1])):
            # Our last write itself, or an event from before it, delivered late. (kopf may
            # hand the daemon a body before its event handler sees it: the next write's
            # fingerprint is then set already.)
            return False
        found = status_fingerprint(body.get("status") or {})
        # While our write is under way, the status it replaces is no one else's either: kopf's
        # finalizer or annotation patch (metadata only) may land between read and write.
        return found != known and (key not in self._replaced or found != self._replaced[key])

    def watches_everything(self) -> bool:
        """Whether every change of what a settled rollout depends on wakes it (the watch cache
        is live for its Deployments and routes)."""
        cache = getattr(self.kube, "cache", None)  # stand-ins (tests) need not have one
        return cache is not None and bool(cache.watches_everything())

    async def reconcile(
        self,
        body: dict[str, Any],
        now: datetime,
        slot: AbstractAsyncContextManager[Any] | None = None,
    ) -> Decision | None:
        """One tick. Its outbound calls (gates, analysis) are made first, holding no ``slot``
        (a blackholed gate once held a reconcile slot for its whole timeout); the rest of the
        tick, the parsed status, the decision and the writes, holds it."""
        started = time.perf_counter()
        self._refuse_stale(body)
        called = await self.call_out(body, now)
        calling = time.perf_counter() - started
        async with slot if slot is not None else nullcontext():
            return await self._tick(body, now, called, calling)

    def _refuse_stale(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        written = self._written.get((namespace, name))
        if (
            written is not None
            and written[0] == str(meta.get("uid") or "")
            and older(meta.get("resourceVersion"), written[1])
        ):
            raise StaleStatus(namespace, name, str(meta.get("resourceVersion")), written[1])

    async def call_out(self, body: dict[str, Any], now: datetime) -> CalledOut:
        """The gates and checks due at ``now``, asked. Reads only what deciding what is due
        needs: the spec (parsed once per generation) and the status without its audit trail
        (the bulk of it), so the calls' wait holds little memory."""
        meta = body["metadata"]
        namespace, generation = meta["namespace"], int(meta.get("generation") or 0)
        refused = self._refused.get((namespace, meta["name"]))
        if self._validate(body, generation) or (refused is not None and refused[0] == generation):
            return CalledOut()
        try:
            spec = self._spec(body, generation)
        except ValidationError:
            return CalledOut()
        status = _parse_status(_without_history(body.get("status")))
        checks = engine.checks_due(spec, status, now)
        due_gates = engine.gates_due(spec, status, now)
        if not checks and not due_gates:
            return CalledOut()

        async def analysis() -> list[MetricResult] | None:
            if not checks:
                return None
            return await self._run_checks(namespace, meta["name"], spec, status, checks, now)

        asked = asyncio.gather(*(self._call_gate(body, spec, gate, status) for gate in due_gates))
        results, answers = await asyncio.gather(analysis(), asked)
        return CalledOut(results, {g.name: a for g, a in zip(due_gates, answers, strict=True)})

    async def _tick(
        self, body: dict[str, Any], now: datetime, called: CalledOut, calling: float
    ) -> Decision | None:
        started = time.perf_counter() - calling  # the calls' time counts, the slot's wait not
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        # Parsed afresh every tick, not cached per resourceVersion: a parsed status with a full
        # audit trail is ~300 KiB, memory that 1,000 rollouts cannot spare (docs/performance.md).
        status = _parse_status(body.get("status"))
        generation = int(meta.get("generation") or 0)
        if len(self._fingerprints) >= VALIDATED_MAX:
            self._fingerprints.clear()  # deleted rollouts' entries: drop them now and then
        self._fingerprints[(namespace, name)] = status_fingerprint(body.get("status") or {})

        problems = self._validate(body, generation)
        refused = self._refused.get((namespace, name))
        if refused is not None and refused[0] == generation:
            problems.append(refused[1])
        elif refused is not None:
            del self._refused[(namespace, name)]  # a new spec: try again
        try:
            spec = self._spec(body, generation)
        except ValidationError:
            await self._hold_invalid(body, status, problems, generation, now)
            return None

        router: TrafficRouter | None = None
        routing_error: str | None = None
        route: RouteState | None = None
        # getattr: stand-ins for the KubeClient (tests) need not have a cache
        cache = getattr(self.kube, "cache", None)
        if not problems:
            router = self.router_factory(
                self.kube.api_client, namespace, name, spec, owner=body, cache=cache
            )
            try:
                route = await router.observe()
            except RoutingError as exc:
                routing_error = str(exc)

        # One after the other: from the cache neither waits, and gather's two tasks per tick
        # were 2% of the operator's CPU at 1,000 rollouts; without a cache, two quick GETs.
        slots: dict[Slot, Any] = {
            slot: slot_state(await self.kube.get_deployment(namespace, slot_name(name, slot)))
            for slot in ("a", "b")
        }

        analysis: list[MetricResult] | None = None
        gates: dict[str, GateResult] = {}
        # with a routing error the calls were made all the same (call_out does not look at the
        # route); their answers are dropped, as the analysis waits for a route that works
        if not problems and not routing_error:
            analysis, gates = called.analysis, called.gates

        observation = Observation(
            generation=generation,
            slots=slots,
            route=route,
            route_edited=self._route_edited((namespace, name), route, status),
            analysis=analysis,
            command=parse_command(meta.get("annotations") or {}),
            gates=gates,
            validation_errors=problems,
            routing_error=routing_error,
            slots_watched=cache is not None and cache.wakes_on_workload_change(),
        )
        decision = engine.decide(
            spec, status, observation, now, history_limit=self.config.history_limit
        )
        decision = await self._apply(body, spec, status, decision, router, observation, now)
        if self.on_decision is not None:
            self.on_decision(body, observation, decision, time.perf_counter() - started)
        return decision

    # ----------------------------------------------------------------- apply

    async def _apply(
        self,
        body: dict[str, Any],
        spec: ModelRolloutSpec,
        before: ModelRolloutStatus,
        decision: Decision,
        router: TrafficRouter | None,
        observation: Observation,
        now: datetime,
    ) -> Decision:
        """Carry ``decision`` out: traffic back towards stable, the status, then the rest. The
        decision as written is returned (a promotion's, with its route read back)."""
        first: list[Action] = []
        rest: list[Action] = []
        # One decide may make several transitions (e.g. enter the last stage and promote at
        # once); only the route of the final state matters, so only the last SetTraffic is kept.
        traffic = [a for a in decision.actions if isinstance(a, SetTraffic)]
        for action in decision.actions:
            if isinstance(action, SetTraffic) and action is not traffic[-1]:
                continue
            towards_stable = (
                isinstance(action, SetTraffic)
                and action.candidate_weight == 0
                and action.mirror == 0
            )
            (first if towards_stable else rest).append(action)

        for action in first:
            await self._do(body, spec, decision.status, action, router)
        if router is not None and first and decision.status.phase is Phase.SUCCEEDED:
            decision = await self._read_back(body, spec, decision, router, observation, now)
        await self._write_status(body, before, decision.status)
        if any(isinstance(a, EnsureSlot) for a in decision.actions):  # something runs
            await self._point_roles(body, spec, decision.status)
        for action in rest:
            await self._do(body, spec, decision.status, action, router)
        if router is not None and any(isinstance(a, SetTraffic) for a in rest):
            decision = await self._read_back(body, spec, decision, router, observation, now)
        return decision

    async def _read_back(
        self,
        body: dict[str, Any],
        spec: ModelRolloutSpec,
        decision: Decision,
        router: TrafficRouter,
        observation: Observation,
        now: datetime,
    ) -> Decision:
        """The route read back right after the tick's write (from the watch cache, which holds
        the write's answer): a promotion's status write says Ready at once, and no look a
        second later is needed to see that the write took (engine.read_back)."""
        try:
            route = await router.observe()
        except RoutingError:
            return decision  # the next look finds out and reports it
        if engine.route_agrees(route, engine.desired_traffic(decision.status)):
            meta = body["metadata"]
            self._remember_route((meta["namespace"], meta["name"]), route)
        return engine.read_back(
            spec,
            decision,
            replace(observation, route=route),
            now,
            history_limit=self.config.history_limit,
        )

    async def _do(
        self,
        body: dict[str, Any],
        spec: ModelRolloutSpec,
        status: ModelRolloutStatus,
        action: Action,
        router: TrafficRouter | None,
    ) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if isinstance(action, SetTraffic):
            if router is not None:
                await router.apply(desired_routes(name, action))
        elif isinstance(action, EnsureSlot):
            # The router sizes the slot: replica-ratio routing weights traffic by replica counts.
            replicas = action.replicas
            if router is not None:
                traffic = desired_routes(name, engine.desired_traffic(status))
                replicas = router.replicas(slot_name(name, action.slot), replicas, traffic)
            try:
                await self.kube.ensure_slot(body, spec, action.slot, action.model, replicas)
            except SlotNotOwned as exc:
                self._refused[(namespace, name)] = (int(meta.get("generation") or 0), str(exc))
            except ApiException as exc:
                if exc.status not in (400, 422):
                    raise
                # The spec (its pod template) cannot make a valid Deployment: that is bad input,
                # reported as such by the next reconcile, not an error retried forever.
                self._refused[(namespace, name)] = (
                    int(meta.get("generation") or 0),
                    f"spec.template: the apiserver refused Deployment "
                    f"{slot_name(name, action.slot)}: {_api_message(exc)}",
                )
        elif isinstance(action, ScaleSlot):
            await self.kube.scale_slot(namespace, name, action.slot, action.replicas)
        elif isinstance(action, EmitEvent):
            self.post_event(body, action.type, action.reason, action.message)
        elif isinstance(action, Notify) and self.notifier is not None and spec.webhooks:
            # The notification speaks of the state just decided, not the one observed.
            current = {**body, "status": status.model_dump(mode="json", by_alias=True)}
            self.spawn(self.notifier(current, spec, action))

    async def _point_roles(
        self, body: dict[str, Any], spec: ModelRolloutSpec, status: ModelRolloutStatus
    ) -> None:
        """The role Services select the slots the committed status gives the roles."""
        meta = body["metadata"]
        try:
            await self.kube.ensure_roles(body, spec, engine.role_slots(status))
        except SlotNotOwned as exc:
            key = (meta["namespace"], meta["name"])
            self._refused[key] = (int(meta.get("generation") or 0), str(exc))

    async def _write_status(
        self, body: dict[str, Any], before: ModelRolloutStatus, after: ModelRolloutStatus
    ) -> bool:
        """Write what changed between ``before`` (the stored status) and ``after``; whether
        anything was written.

        Only the top-level fields that changed are sent: an analysis run does not resend the
        audit trail. (A merge patch replaces lists and merges objects; every object is sent
        whole, its absent fields as null, so each sent field ends up exactly as decided.) The
        new resourceVersion is remembered: a later tick on an older body is refused
        (:class:`StaleStatus`) instead of deciding again on what was already decided.
        """
        # Model equality first (cheap: the audit entries are shared), the wire form only when
        # the models differ (NaN != NaN, but both are null on the wire).
        if after == before:
            return False
        # Against what is stored, not against ``before``: parsing fills in defaults (weights
        # 0/0, empty analysis), and a field equal to its default but never written must still
        # be sent once, or readers of the object never see it.
        stored = body.get("status") or {}
        patch = status_patch(stored, after.model_dump(mode="json", by_alias=True))
        if not patch:
            return False
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        # before the write: its own watch event must not look like someone else's change
        self._replaced[key] = self._fingerprints.get(key)
        self._fingerprints[key] = status_fingerprint({**stored, **patch})
        try:
            version = await self.kube.patch_status(key[0], key[1], patch)
        finally:
            self._replaced.pop(key, None)
        if isinstance(version, str):
            if len(self._written) >= VALIDATED_MAX:
                self._written.clear()  # deleted rollouts' entries: drop them all now and then
            self._written[key] = (str(meta.get("uid") or ""), version)
        return True

    def _route_edited(
        self, key: tuple[str, str], route: RouteState | None, status: ModelRolloutStatus
    ) -> bool:
        """Whether the route changed since it last served what the status asks (remembering
        its version when it does). After a restart nothing is remembered: a route edited while
        the operator was down is put back without being reported as someone else's edit."""
        if route is None or route.version is None:
            return False
        if engine.route_agrees(route, engine.desired_traffic(status)):
            self._remember_route(key, route)
            return False
        agreed = self._route_agreed.get(key)
        return agreed is not None and agreed != route.version

    def _remember_route(self, key: tuple[str, str], route: RouteState) -> None:
        if route.version is not None:
            if len(self._route_agreed) >= VALIDATED_MAX:
                self._route_agreed.clear()  # deleted rollouts' entries: drop them now and then
            self._route_agreed[key] = route.version

    def spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # a notification must never break a reconcile
                log.warning("notification failed", exc_info=True)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -------------------------------------------------------------- analysis

    async def _run_checks(
        self,
        namespace: str,
        name: str,
        spec: ModelRolloutSpec,
        status: ModelRolloutStatus,
        checks: list[Any],
        now: datetime,
    ) -> list[MetricResult]:
        async def read_secret(ref: SecretKeyRef) -> str:
            value = await self.kube.read_secret_key(namespace, ref.name, ref.key)
            if self.register_secret is not None:
                self.register_secret(value)
            return value

        try:
            prometheus = spec.analysis.prometheus
            prometheus = prometheus.model_copy(
                update={"timeout": prometheus.effective_timeout(spec.analysis.interval)}
            )
            provider = await self.providers.provider_for(prometheus, read_secret, namespace)
        except (SecretNotFound, ValueError) as exc:
            return [
                MetricResult(name=c.name, verdict=Verdict.ERROR, message=str(exc), measured_at=now)
                for c in checks
            ]
        stable_slot = status.stable_slot or "a"
        candidate_slot: Slot = "b" if stable_slot == "a" else "a"
        ctx = metric_analysis.QueryContext(
            namespace=namespace,
            rollout=name,
            stable_service=slot_name(name, stable_slot),
            candidate_service=slot_name(name, candidate_slot),
            stage=status.stage.name if status.stage else "",
            version=status.candidate.version if status.candidate else spec.model.version,
            interval=parse_duration(spec.analysis.interval),
            weight=_live_weight(spec, status),
            mirror=status.stage.mirror if status.stage else 0,
            traffic=spec.analysis.traffic_check,
        )
        return await metric_analysis.run_checks(
            checks, ctx, provider, now, status.stage.ready_at if status.stage else None
        )

    async def _call_gate(
        self,
        body: dict[str, Any],
        spec: ModelRolloutSpec,
        gate: WebhookSpec,
        status: ModelRolloutStatus,
    ) -> GateResult:
        if self.gate_caller is None:
            return (
                GateResult.OPEN
                if gate.type is not WebhookType.CONFIRM_PROMOTION
                else GateResult.CLOSED
            )
        return await self.gate_caller(body, spec, gate, status)

    # --------------------------------------------------------------- invalid

    async def _hold_invalid(
        self,
        body: dict[str, Any],
        status: ModelRolloutStatus,
        problems: list[str],
        generation: int,
        now: datetime,
    ) -> None:
        """A spec that does not even parse: record why, touch nothing else."""
        new = engine.invalid_spec_status(status, problems, generation, now)
        if await self._write_status(body, status, new) and new.message != status.message:
            self.post_event(body, "Warning", "InvalidSpec", new.message)


def _live_weight(spec: ModelRolloutSpec, status: ModelRolloutStatus) -> float:
    """The candidate's share of live traffic the stage asks for; under replica-ratio routing
    the share of ready pods, which is what replica counts can express."""
    actual = status.weights.actual_candidate
    if spec.traffic_routing.replicas is not None and actual is not None:
        return actual
    return status.stage.weight if status.stage else 0


def desired_routes(rollout: str, traffic: SetTraffic) -> DesiredRoutes:
    """The engine's SetTraffic (slots) as the routers' DesiredRoutes (Services)."""
    candidate = traffic.candidate_slot
    return DesiredRoutes(
        stable_service=slot_name(rollout, traffic.stable_slot),
        candidate_service=slot_name(rollout, candidate) if candidate else None,
        candidate_weight=traffic.candidate_weight if candidate else 0,
        mirror=traffic.mirror if candidate else 0,
    )


def _api_message(exc: ApiException) -> str:
    """The apiserver's own explanation of a refused request (its Status message)."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or exc.status)[:1000]


_T = TypeVar("_T")


def _once_per_generation(
    cache: dict[tuple[str, str], tuple[str, int, _T]],
    body: dict[str, Any],
    generation: int,
    compute: Callable[[], _T],
) -> _T:
    """``compute()`` for this rollout's spec generation, from ``cache`` when it has it (same uid
    and generation; generation 0, unknown, is never cached). An exception is not cached."""
    meta = body["metadata"]
    key, uid = (meta["namespace"], meta["name"]), str(meta.get("uid") or "")
    cached = cache.get(key)
    if cached is not None and generation and cached[:2] == (uid, generation):
        return cached[2]
    value = compute()
    if len(cache) >= VALIDATED_MAX:
        cache.clear()  # deleted rollouts' entries: drop them all now and then
    cache[key] = (uid, generation, value)
    return value


class StaleStatus(Exception):
    """The rollout's body is older than the operator's own last status write (the watch has
    not delivered that write yet): look again once it has, rather than decide twice.
    ``written`` is the resourceVersion to wait for."""

    def __init__(self, namespace: str, name: str, seen: str, written: str) -> None:
        super().__init__(
            f"{namespace}/{name}: resourceVersion {seen} is older than this operator's own "
            f"status write {written}"
        )
        self.written = written


_STATUS_FIELDS = frozenset(
    field.alias or name for name, field in ModelRolloutStatus.model_fields.items()
)


def status_fingerprint(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a rollout's status cheaply: its state fields and the head of its
    hash-chained audit trail (every decision appends to it)."""
    history = status.get("history") or []
    head = history[-1] if history and isinstance(history[-1], Mapping) else {}
    stage = status.get("stage") if isinstance(status.get("stage"), Mapping) else {}
    return (
        status.get("phase"),
        status.get("stableSlot"),
        status.get("stableVersion"),
        status.get("candidateVersion"),
        (stage or {}).get("name"),
        len(history),
        head.get("hash"),
    )


def status_patch(stored: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from the stored status to ``after``, top-level fields only: the changed
    or missing ones whole, the removed ones as null. Fields that are not ours (another
    controller's, kopf's) are left alone."""
    patch = {key: value for key, value in after.items() if stored.get(key) != value}
    patch.update({key: None for key in stored if key not in after and key in _STATUS_FIELDS})
    return patch


def _without_history(raw: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (raw or {}).items() if k != "history"}


def _parse_status(raw: dict[str, Any] | None) -> ModelRolloutStatus:
    try:
        return ModelRolloutStatus.model_validate(raw or {})
    except ValidationError:
        log.error("status unreadable; starting from an empty status", exc_info=True)
        return ModelRolloutStatus()


def parse_command(annotations: dict[str, str]) -> Command | None:
    """``modelrollout.dev/command: <verb>[:<id>]``; the whole value is the command's id.

    Unknown verbs are ignored."""
    raw = (annotations.get(ANNOTATION_COMMAND) or "").strip()
    if not raw:
        return None
    verb = raw.partition(":")[0]
    try:
        parsed = CommandVerb(verb.strip().lower())
    except ValueError:
        return None
    return Command(
        verb=parsed,
        id=raw,
        actor=(annotations.get(ANNOTATION_COMMAND_BY) or "unknown")[:253],
    )
