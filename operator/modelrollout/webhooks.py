"""Outgoing webhooks: gates, Slack-compatible notifications and CloudEvents audit records.

The caller resolves ``url`` and ``headers`` (they may come from Secrets; see
:func:`parse_headers`) and registers them with :func:`modelrollout.observability.register_secret`.
This module never logs a URL's path, query or credentials (only ``scheme://host``), nor any
header value: webhook URLs often carry their secret in the path (Slack) or the query.

- :func:`call_gate` answers Open (2xx), Closed (any other status) or Timeout (no answer after
  the retries: timeout, connection or TLS error); the engine treats Timeout like an
  inconclusive check. A status is an answer and is not retried; the engine asks again later.
- :func:`notify` and :func:`send_audit_event` retry transport errors, 429 and 5xx with
  exponential backoff, a bounded number of times, then give up and return False. They never
  raise; the reconciler schedules them in the background so they never block a reconcile.

Every attempt is one bounded call (:mod:`modelrollout.outbound`): the webhook's ``timeout``
(at most :data:`~modelrollout.api.models.MAX_OUTBOUND_TIMEOUT`) is a total deadline for it,
a wait for a place in its namespace's share included, and at most :data:`BODY_LIMIT` bytes of
the answer are read (its status is the answer; the body is dropped). A whole call therefore
ends within ``attempts x timeout`` plus the backoff. Calls share one :class:`WebhookHTTP`
(connection pools, and a :class:`~modelrollout.outbound.FairLimiter` by namespace).

TLS verification is on unless the webhook sets ``insecureSkipVerify``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from modelrollout.api.models import (
    GROUP,
    PLURAL,
    VERSION,
    HistoryEntry,
    MetricResult,
    ModelIdentity,
    ModelRef,
    WebhookSpec,
    WebhookType,
    parse_duration,
)
from modelrollout.engine.types import GateResult
from modelrollout.observability import METRICS
from modelrollout.outbound import Answer, FairLimiter, bounded_request, clip, new_client
from modelrollout.outbound.http import tls_context, tls_failure, transport_failure

log = structlog.get_logger("modelrollout.webhooks")

BODY_LIMIT = 64 * 1024
"""Most of a webhook's answer that is read; its status is the answer, the body is dropped."""
CAPACITY = 128
"""Webhook calls in flight at once, all namespaces together."""
PER_NAMESPACE = 16
"""Webhook calls in flight at once for one namespace: 200 rollouts with a blackholed gate in
one namespace hold 16 places, and every other namespace's calls still find one."""
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
AUDIT_TYPE_PREFIX = "dev.modelrollout.audit."
GATE_TYPES = frozenset({WebhookType.PRE_ROLLOUT, WebhookType.CONFIRM_PROMOTION})


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries; waits double from ``initial`` seconds up to ``maximum``."""

    attempts: int = 3
    initial: float = 0.5
    maximum: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError(
                f"need 0 <= initial <= maximum, got initial={self.initial} maximum={self.maximum}"
            )


GATE_RETRY = RetryPolicy(attempts=3, initial=0.5, maximum=4.0)
NOTIFY_RETRY = RetryPolicy(attempts=4, initial=1.0, maximum=15.0)


# ----------------------------------------------------------------------------- helpers


def safe_url(url: str) -> str:
    """``scheme://host[:port]`` only: what may appear in a log line or a status message."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme or '?'}://{host}{port}"


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_headers(text: str | bytes) -> dict[str, str]:
    """Validate the content of a ``headersFrom`` Secret: a JSON object of string values.

    The error messages name keys, never values.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f'headers must be a JSON object such as {{"X-Token": "..."}}: {exc.msg}'
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"headers must be a JSON object, got a JSON {type(parsed).__name__}")
    headers: dict[str, str] = {}
    for key, value in parsed.items():
        if not _HEADER_NAME.match(key):
            raise ValueError(f"header name {key!r} is not a valid HTTP header name")
        if not isinstance(value, str):
            raise ValueError(
                f"header {key!r} must have a string value, not {type(value).__name__}"
            )
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {key!r} has a line break in its value")
        headers[key] = value
    return headers


def _describe(exc: BaseException, url: str) -> str:
    """What went wrong, without the URL's path, query or credentials."""
    text = transport_failure(exc)
    if url:
        text = text.replace(url, safe_url(url))
        parts = urlsplit(url)
        for secret_part in (parts.query, parts.path, parts.password or ""):
            if len(secret_part) > 1:
                text = text.replace(secret_part, "...")
    return clip(f"{type(exc).__name__}: {text or 'no details'}")


class _RetryableStatus(Exception):
    """The receiver answered 429 or 5xx: worth another try."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Transient(Exception):
    """A transport failure worth another try (timeout, refused, reset)."""

    def __init__(self, cause: BaseException, description: str) -> None:
        super().__init__(description)
        self.cause = cause


def _timeout_seconds(spec: WebhookSpec) -> float:
    return max(0.001, parse_duration(spec.timeout).total_seconds())


class WebhookHTTP:
    """The webhooks' shared HTTP stack: one client that verifies TLS and one that does not
    (made when first needed), and the fair per-namespace limiter of their calls."""

    def __init__(
        self,
        limiter: FairLimiter | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.limiter = limiter or FairLimiter(CAPACITY, PER_NAMESPACE)
        self._transport = transport
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def client(self, insecure: bool) -> httpx.AsyncClient:
        if insecure not in self._clients:
            verify = tls_context(verify=not insecure)
            self._clients[insecure] = new_client(verify, transport=self._transport)
        return self._clients[insecure]

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


@asynccontextmanager
async def _stack(
    http: WebhookHTTP | None, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[WebhookHTTP]:
    """``http``, or a stack of the call's own (closed afterwards) when the caller has none."""
    if http is not None:
        yield http
        return
    own = WebhookHTTP(transport=transport)
    try:
        yield own
    finally:
        await own.aclose()


async def _post(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str,
    http: WebhookHTTP,
    namespace: str,
) -> Answer:
    """One POST, bounded as a whole by the webhook's timeout (a trickling server included)."""
    client = http.client(spec.insecure_skip_verify)
    request = client.build_request(
        "POST", url, content=body, headers={**headers, "Content-Type": content_type}
    )
    return await bounded_request(
        client,
        request,
        deadline=_timeout_seconds(spec),
        limit=BODY_LIMIT,
        limiter=http.limiter,
        key=namespace,
    )


async def _post_with_retries(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str,
    *,
    retry: RetryPolicy,
    retry_status: bool,
    http: WebhookHTTP,
    namespace: str,
) -> Answer:
    """POST with retries of transport errors (and of 429/5xx when ``retry_status``).

    Raises :class:`_Transient` or :class:`_RetryableStatus` when the retries are used up, and
    ``ValueError`` for a failure that no retry can fix (bad URL, TLS verification).
    """
    bound = log.bind(webhook=spec.name, type=spec.type.value, target=safe_url(url))
    attempt_no = 0
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(retry.attempts),
        wait=wait_exponential(multiplier=retry.initial, max=retry.maximum),
        retry=retry_if_exception_type((_Transient, _RetryableStatus)),
        reraise=True,  # the last _Transient/_RetryableStatus, not tenacity's RetryError
    ):
        with attempt:
            attempt_no += 1
            try:
                response = await _post(spec, url, headers, body, content_type, http, namespace)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ValueError(f"invalid webhook URL: {_describe(exc, url)}") from None
            except (httpx.TransportError, TimeoutError) as exc:
                if tls_failure(exc) is not None:  # no retry will fix a certificate
                    raise ValueError(_describe(exc, url)) from None
                description = (
                    f"no answer within {spec.timeout}"
                    if isinstance(exc, TimeoutError | httpx.TimeoutException)
                    else _describe(exc, url)
                )
                bound.info("webhook attempt failed", attempt=attempt_no, error=description)
                raise _Transient(exc, description) from None
            status = response.status
            if retry_status and (status == 429 or status >= 500):
                bound.info("webhook attempt failed", attempt=attempt_no, status=status)
                raise _RetryableStatus(status)
            return response
    raise AssertionError("unreachable: tenacity either returns or raises")


# ----------------------------------------------------------------------------- gates


def _model_dict(model: ModelRef | ModelIdentity | Mapping[str, Any] | None) -> dict[str, Any]:
    if model is None:
        return {}
    if isinstance(model, Mapping):
        return dict(model)
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def gate_payload(
    *,
    namespace: str,
    rollout: str,
    webhook_type: WebhookType | str,
    model: ModelRef | ModelIdentity | Mapping[str, Any] | None,
    stage: str | None,
    metrics: Sequence[MetricResult] = (),
) -> dict[str, Any]:
    """The JSON a gate receives: which rollout, which model, which stage, the latest results."""
    return {
        "rollout": rollout,
        "namespace": namespace,
        "type": str(WebhookType(webhook_type).value),
        "model": _model_dict(model),
        "stage": stage,
        "metrics": [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in metrics],
    }


async def call_gate(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    payload: Mapping[str, Any],
    *,
    retry: RetryPolicy = GATE_RETRY,
    http: WebhookHTTP | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> GateResult:
    """Ask a pre-rollout or confirm-promotion gate: Open on 2xx, Closed on another status,
    Timeout when it cannot be asked (timeout, connection or TLS error, after the retries).

    The call takes places under the payload's namespace in ``http``'s limiter."""
    if spec.type not in GATE_TYPES:
        raise ValueError(f"webhook {spec.name!r} is of type {spec.type.value}, not a gate")
    bound = log.bind(webhook=spec.name, type=spec.type.value, target=safe_url(url))
    body = json.dumps(payload, separators=(",", ":")).encode()
    namespace = str(payload.get("namespace") or "")
    try:
        async with _stack(http, transport) as stack:
            response = await _post_with_retries(
                spec, url, headers, body, "application/json",
                retry=retry, retry_status=False, http=stack, namespace=namespace,
            )
    except (_Transient, ValueError) as exc:
        bound.warning("gate unreachable, counted as inconclusive", error=str(exc))
        METRICS.webhook_request(spec.type.value, "timeout")
        return GateResult.TIMEOUT
    if 200 <= response.status < 300:
        METRICS.webhook_request(spec.type.value, "open")
        bound.info("gate open", status=response.status)
        return GateResult.OPEN
    METRICS.webhook_request(spec.type.value, "closed")
    bound.info("gate closed", status=response.status)
    return GateResult.CLOSED


# ----------------------------------------------------------------------------- notifications

_COLORS = {"good": "#2eb886", "warning": "#daa038", "danger": "#a30200", "info": "#439fe0"}


def _mrkdwn(text: str) -> str:
    """Escape what Slack's mrkdwn treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notification_message(
    *,
    event: str,
    namespace: str,
    rollout: str,
    version: str | None,
    stage: str | None,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """A Slack-compatible message (``text`` fallback, ``blocks`` and a coloured attachment)."""
    kind = event.lower()
    version_text = f"version {version}" if version else "the candidate"
    if "rolledback" in kind or "rollback" in kind or "abort" in kind:
        color, headline = "danger", f"{version_text} rolled back"
    elif "fail" in kind:
        color, headline = "danger", f"{version_text} failed"
    elif "promot" in kind or "succeed" in kind:
        color, headline = "good", f"{version_text} promoted"
    elif "stage" in kind:
        color, headline = "info", f"{version_text} entered stage {stage or '?'}"
    elif "pause" in kind or "stall" in kind or "inconclusive" in kind:
        color, headline = "warning", f"{version_text}: {event}"
    else:
        color, headline = "info", f"{version_text}: {event}"
    text = f"ModelRollout {namespace}/{rollout}: {headline}"
    if reason:
        text += f" ({reason})"
    fields = [
        {"type": "mrkdwn", "text": f"*Rollout*\n{_mrkdwn(rollout)}"},
        {"type": "mrkdwn", "text": f"*Namespace*\n{_mrkdwn(namespace)}"},
        {"type": "mrkdwn", "text": f"*Version*\n{_mrkdwn(version or '-')}"},
        {"type": "mrkdwn", "text": f"*Stage*\n{_mrkdwn(stage or '-')}"},
    ]
    attachment_blocks: list[dict[str, Any]] = [{"type": "section", "fields": fields}]
    details = " ".join(part for part in (reason, message) if part and part != headline)
    if details:
        attachment_blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n{_mrkdwn(details)}"}}
        )
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*ModelRollout {_mrkdwn(namespace)}/{_mrkdwn(rollout)}*: "
                    f"{_mrkdwn(headline)}",
                },
            }
        ],
        "attachments": [{"color": _COLORS[color], "fallback": text, "blocks": attachment_blocks}],
    }


async def _deliver(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str,
    retry: RetryPolicy,
    what: str,
    *,
    namespace: str,
    http: WebhookHTTP | None,
    transport: httpx.AsyncBaseTransport | None,
) -> bool:
    bound = log.bind(webhook=spec.name, type=spec.type.value, target=safe_url(url))
    try:
        async with _stack(http, transport) as stack:
            response = await _post_with_retries(
                spec, url, headers, body, content_type,
                retry=retry, retry_status=True, http=stack, namespace=namespace,
            )
    except _RetryableStatus as exc:
        bound.warning(f"{what} not delivered", status=exc.status, attempts=retry.attempts)
    except (_Transient, ValueError) as exc:
        bound.warning(f"{what} not delivered", error=str(exc), attempts=retry.attempts)
    except Exception as exc:  # never let a notification break the caller
        bound.warning(f"{what} not delivered", error=_describe(exc, url))
    else:
        if 200 <= response.status < 300:
            METRICS.webhook_request(spec.type.value, "delivered")
            bound.debug(f"{what} delivered", status=response.status)
            return True
        bound.warning(f"{what} refused", status=response.status)
    METRICS.webhook_request(spec.type.value, "failed")
    return False


async def notify(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    *,
    event: str,
    namespace: str,
    rollout: str,
    version: str | None,
    stage: str | None,
    reason: str = "",
    message: str = "",
    retry: RetryPolicy = NOTIFY_RETRY,
    http: WebhookHTTP | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bool:
    """Post a Slack-compatible message about a stage change, promotion or rollback.

    True when delivered (2xx). Never raises; retries transport errors, 429 and 5xx.
    """
    if spec.type is not WebhookType.NOTIFY:
        raise ValueError(f"webhook {spec.name!r} is of type {spec.type.value}, not notify")
    payload = notification_message(
        event=event, namespace=namespace, rollout=rollout, version=version, stage=stage,
        reason=reason, message=message,
    )
    body = json.dumps(payload).encode()
    return await _deliver(
        spec, url, headers, body, "application/json", retry, "notification",
        namespace=namespace, http=http, transport=transport,
    )


# ----------------------------------------------------------------------------- audit


def _entry_dict(entry: HistoryEntry | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(entry, HistoryEntry):
        return entry.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(entry)


def cloud_event(
    *, namespace: str, rollout: str, entry: HistoryEntry | Mapping[str, Any]
) -> dict[str, Any]:
    """The audit entry as a CloudEvents 1.0 structured-mode JSON object."""
    data = _entry_dict(entry)
    event = str(data.get("event") or "Unknown")
    event_id = data.get("hash") or hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    when = data.get("time") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "specversion": "1.0",
        "type": f"{AUDIT_TYPE_PREFIX}{event}",
        "source": f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{rollout}",
        "id": str(event_id),
        "time": str(when),
        "datacontenttype": "application/json",
        "data": data,
    }


async def send_audit_event(
    spec: WebhookSpec,
    url: str,
    headers: Mapping[str, str],
    *,
    namespace: str,
    rollout: str,
    entry: HistoryEntry | Mapping[str, Any],
    retry: RetryPolicy = NOTIFY_RETRY,
    http: WebhookHTTP | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bool:
    """POST one audit entry as a CloudEvent. True when delivered; never raises."""
    if spec.type is not WebhookType.AUDIT:
        raise ValueError(f"webhook {spec.name!r} is of type {spec.type.value}, not audit")
    body = json.dumps(cloud_event(namespace=namespace, rollout=rollout, entry=entry)).encode()
    return await _deliver(
        spec, url, headers, body, CLOUDEVENTS_CONTENT_TYPE, retry, "audit event",
        namespace=namespace, http=http, transport=transport,
    )
