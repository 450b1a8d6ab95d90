"""kopf reads the apiserver through :mod:`modelrollout.kube.decoding`: an object that cannot be
decoded is reported and left out, instead of failing kopf's watcher and with it the operator.

kopf has no setting for its JSON decoding, so two of its own seams are used:

- watch streams: kopf decodes each line with the ``json`` name of its API module
  (:data:`KOPF_API_MODULE`, as of kopf 1.45); that name is given a copy of the json module whose
  ``loads`` is :func:`~modelrollout.kube.decoding.decode_event` (orjson, 2.4 times faster than
  the standard library on the operator's bodies, docs/performance.md);
- everything else (lists, the answers to its patches): :func:`decode_answers`, a middleware of
  the aiohttp session the operator hands kopf (``kopf.on.login``), decodes each JSON answer once
  with :func:`~modelrollout.kube.decoding.decode_document` and gives kopf that result.
"""

from __future__ import annotations

import importlib
import json
import types
from typing import Any, Final

import aiohttp

from modelrollout.kube.decoding import Report, decode_document, decode_event

KOPF_API_MODULE: Final = "kopf._cogs.clients.api"
_MARK: Final = "_modelrollout_decoder"


def decode_watch_events(report: Report, module_name: str = KOPF_API_MODULE) -> bool:
    """Install :func:`decode_event` as kopf's watch-line decoder; False (kopf keeps its own)
    when kopf no longer decodes there. orjson's decode error is a ``json.JSONDecodeError``, the
    error kopf expects of a torn line."""
    module: Any = importlib.import_module(module_name)
    current: Any = getattr(module, "json", None)
    if getattr(current, _MARK, False):
        current.loads = lambda line: decode_event(line, report)
        return True
    if current is not json:
        return False
    ours = types.SimpleNamespace(**vars(json))
    ours.loads = lambda line: decode_event(line, report)
    setattr(ours, _MARK, True)
    module.json = ours
    return True


def _is_watch(request: aiohttp.ClientRequest) -> bool:
    return request.url.query.get("watch") in ("true", "1")


def decode_answers(report: Report) -> aiohttp.ClientMiddlewareType:
    """A session middleware: each JSON answer but a watch stream is read and decoded here, and
    ``response.json()`` returns that (kopf's list and patch calls read it that way)."""

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        response = await handler(request)
        if _is_watch(request) or response.content_type != "application/json":
            return response
        try:
            decoded = decode_document(await response.read(), report)
        except json.JSONDecodeError:
            return response  # not JSON after all: kopf's own decoding reports it as before

        async def json_of(*_: Any, **__: Any) -> Any:
            return decoded

        response.json = json_of  # type: ignore[method-assign]
        return response

    return middleware
