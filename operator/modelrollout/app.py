"""Wiring: builds the reconciler and its collaborators for the kopf handlers (``Memo``).

Everything with a side effect the engine asks for is bound here: Kubernetes Events (through
kopf's poster), webhook gates and notifications, the audit sink, the operator's own metrics
and the structured audit log line of every decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import kopf
import structlog
from kubernetes import client as k8s

from modelrollout import observability, webhooks
from modelrollout.api.models import (
    API_VERSION,
    KIND,
    HistoryEntry,
    ModelRolloutSpec,
    ModelRolloutStatus,
    SecretKeyRef,
    WebhookSpec,
    WebhookType,
)
from modelrollout.engine.types import Decision, GateResult, Notify, Observation
from modelrollout.handlers import MAX_CONCURRENT_RECONCILES, Memo
from modelrollout.kube.cache import ObjectCache
from modelrollout.kube.client import KubeClient, SecretNotFound
from modelrollout.metrics.prometheus import PrometheusProviderFactory, QueryEvent
from modelrollout.quarantine import Quarantine
from modelrollout.reconciler import OperatorConfig, Reconciler

audit_log = structlog.get_logger("modelrollout.audit")
log = structlog.get_logger("modelrollout.app")


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event about the rollout, through kopf's rate-limited poster."""
    obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
    kopf.event(kopf.Body(cast(Any, obj)), type=type_, reason=reason, message=message[:1024])


class Webhooks:
    """Resolves a webhook's URL and headers (possibly from Secrets) and calls it, on the
    webhooks' shared HTTP stack (each namespace's calls in its own share of it)."""

    def __init__(self, kube: KubeClient, http: webhooks.WebhookHTTP | None = None) -> None:
        self.kube = kube
        self.http = http or webhooks.WebhookHTTP()

    async def _target(self, namespace: str, spec: WebhookSpec) -> tuple[str, dict[str, str]]:
        url = spec.url
        if spec.url_from is not None:
            url = await self._secret(namespace, spec.url_from)
        if not url:
            raise ValueError(f"webhook {spec.name!r} has no url")
        headers: dict[str, str] = {}
        if spec.headers_from is not None:
            headers = webhooks.parse_headers(await self._secret(namespace, spec.headers_from))
            for value in headers.values():
                observability.register_secret(value)
        return url, headers

    async def _secret(self, namespace: str, ref: SecretKeyRef) -> str:
        value = await self.kube.read_secret_key(namespace, ref.name, ref.key)
        observability.register_secret(value)
        return value

    async def gate(
        self,
        body: dict[str, Any],
        spec: ModelRolloutSpec,
        gate: WebhookSpec,
        status: ModelRolloutStatus,
    ) -> GateResult:
        meta = body["metadata"]
        try:
            url, headers = await self._target(meta["namespace"], gate)
        except (SecretNotFound, ValueError) as exc:
            log.warning(
                "gate not callable; counted as inconclusive", webhook=gate.name, error=str(exc)
            )
            return GateResult.TIMEOUT
        payload = webhooks.gate_payload(
            rollout=meta["name"],
            namespace=meta["namespace"],
            webhook_type=gate.type,
            model=status.candidate or spec.model,
            stage=status.stage.name if status.stage else None,
            metrics=status.analysis.results,
        )
        return await webhooks.call_gate(gate, url, headers, payload, http=self.http)

    async def _usable(
        self, namespace: str, spec: ModelRolloutSpec, kind: WebhookType
    ) -> AsyncIterator[tuple[WebhookSpec, str, dict[str, str]]]:
        """Webhooks of ``kind`` with their URL and headers; unusable ones are logged and skipped."""
        for hook in spec.webhooks:
            if hook.type is not kind:
                continue
            try:
                url, headers = await self._target(namespace, hook)
            except (SecretNotFound, ValueError) as exc:
                log.warning("webhook unusable", webhook=hook.name, type=kind.value, error=str(exc))
                continue
            yield hook, url, headers

    async def notify(self, body: dict[str, Any], spec: ModelRolloutSpec, note: Notify) -> None:
        meta = body["metadata"]
        async for hook, url, headers in self._usable(meta["namespace"], spec, WebhookType.NOTIFY):
            await webhooks.notify(
                hook,
                url,
                headers,
                event=note.event,
                namespace=meta["namespace"],
                rollout=meta["name"],
                version=spec.model.version,
                stage=note.stage,
                message=note.message,
                http=self.http,
            )

    async def audit(
        self, body: dict[str, Any], spec: ModelRolloutSpec, entries: list[HistoryEntry]
    ) -> None:
        meta = body["metadata"]
        async for hook, url, headers in self._usable(meta["namespace"], spec, WebhookType.AUDIT):
            for entry in entries:
                await webhooks.send_audit_event(
                    hook,
                    url,
                    headers,
                    namespace=meta["namespace"],
                    rollout=meta["name"],
                    entry=entry,
                    http=self.http,
                )


def _new_entries(body: dict[str, Any], decision: Decision) -> list[HistoryEntry]:
    old = (body.get("status") or {}).get("history") or []
    last_seq = max((int(e.get("seq") or 0) for e in old), default=-1)
    return [e for e in decision.status.history if e.seq > last_seq]


def build_memo(
    api_client: k8s.ApiClient,
    *,
    prometheus_url: str | None,
    history_limit: int = 100,
    cache: ObjectCache | None = None,
    max_concurrent_reconciles: int | None = None,
) -> Memo:
    kube = KubeClient(api_client, cache)
    hooks = Webhooks(kube)
    metrics = observability.METRICS

    def on_query(event: QueryEvent) -> None:
        metrics.prometheus_query_duration.observe(event.seconds)
        if event.outcome == "error":
            metrics.prometheus_query_error()

    reconciler: Reconciler

    def on_decision(
        body: dict[str, Any], observation: Observation, decision: Decision, seconds: float
    ) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        metrics.reconcile_duration.observe(seconds)
        metrics.observe_phase(namespace, name, decision.status.phase)
        for result in observation.analysis or []:
            metrics.analysis_verdict(result.name, result.verdict.value)
        entries = _new_entries(body, decision)
        for entry in entries:
            if entry.event == "StageEntered" and entry.to_stage:
                metrics.stage_transition(namespace, name, entry.to_stage)
            if entry.event == "RolledBack":
                # The entry's reason leads with the code ("AnalysisFailed: ..."); status's
                # rollbackReason is the free text without it, which would count as "Other".
                metrics.rollback(namespace, name, entry.reason)
            record = entry.model_dump(mode="json", by_alias=True, exclude_none=True)
            record["decision"] = record.pop("event")  # structlog's own key is "event"
            audit_log.info("audit", namespace=namespace, rollout=name, **record)
        if entries and any(h.type is WebhookType.AUDIT for h in _webhooks(body)):
            spec = ModelRolloutSpec.model_validate(body["spec"])
            reconciler.spawn(hooks.audit(body, spec, entries))

    reconciler = Reconciler(
        kube=kube,
        providers=PrometheusProviderFactory(prometheus_url, on_query=on_query),
        post_event=post_event,
        config=OperatorConfig(prometheus_url=prometheus_url, history_limit=history_limit),
        notifier=hooks.notify,
        gate_caller=hooks.gate,
        on_decision=on_decision,
        register_secret=observability.register_secret,
    )
    slots = max_concurrent_reconciles or MAX_CONCURRENT_RECONCILES
    return Memo(reconciler=reconciler, reconcile_slots=asyncio.Semaphore(slots))


def build_quarantine() -> Quarantine:
    """Undecodable rollouts: held, each version with a Warning Event, and counted."""
    return Quarantine(post_event, on_report=observability.METRICS.undecodable_objects.inc)


def _webhooks(body: dict[str, Any]) -> list[WebhookSpec]:
    raw = (body.get("spec") or {}).get("webhooks") or []
    try:
        return [WebhookSpec.model_validate(w) for w in raw]
    except Exception:
        return []
