"""Outbound HTTP: every call the operator makes to a tenant's dependency (Prometheus, webhooks).

- ``http``: one httpx.AsyncClient stack; each call has a total deadline (connect, send, headers
  and body together) and a response size cap, its TLS material in memory.
- ``fairness``: :class:`FairLimiter`, concurrency shared fairly per namespace, so one
  namespace's slow or blackholed dependencies cannot delay another's calls.
- ``text``: short error texts (a marker when cut), never a response body whole.
"""

from modelrollout.outbound.fairness import FairLimiter
from modelrollout.outbound.http import (
    Answer,
    AnswerTooLarge,
    bounded_request,
    new_client,
    tls_context,
)
from modelrollout.outbound.text import clip

__all__ = [
    "Answer",
    "AnswerTooLarge",
    "FairLimiter",
    "bounded_request",
    "clip",
    "new_client",
    "tls_context",
]
