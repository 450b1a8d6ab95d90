"""Bounded HTTP calls on httpx.AsyncClient: a total deadline and a size cap for every answer.

httpx's own timeouts (like requests') apply per phase and per socket read, so a server that
trickles a byte every half second never trips them. Here one ``asyncio.timeout`` covers the
whole call: the wait for a place in the caller's :class:`FairLimiter`, connecting, sending,
the headers and the body. The body is streamed and reading stops at ``limit`` bytes (a
declared Content-Length above it is refused before reading anything): a 400 MB answer costs
the operator at most ``limit`` bytes, not 400 MB.

Answers are asked for uncompressed (``Accept-Encoding: identity``) and read raw, so a small
compressed body cannot inflate past the cap in the decoder; the caller decides what an
answer that is compressed anyway is worth.

TLS material stays in memory: a CA bundle becomes an ``ssl.SSLContext`` (``cadata=``), never
a file.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass

import certifi
import httpx

from modelrollout import __version__
from modelrollout.outbound.fairness import FairLimiter

USER_AGENT = f"modelrollout-operator/{__version__}"

MIB = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """What a server answered, its body read up to the caller's limit."""

    status: int
    headers: httpx.Headers
    body: bytes
    cut: bool  # the body went on beyond the limit; the rest was never read
    limit: int

    def whole(self) -> bytes:
        """The body, or :class:`AnswerTooLarge` if it was cut."""
        if self.cut:
            raise AnswerTooLarge(self.limit)
        return self.body


class AnswerTooLarge(Exception):
    """The answer's body is larger than the limit the caller set."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than the {size_text(limit)} limit; reading stopped there")
        self.limit = limit


def size_text(size: int) -> str:
    return f"{size / MIB:g} MiB" if size >= MIB else f"{size / 1024:g} KiB"


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", True
    if response.is_stream_consumed:  # a transport that answered from memory, already read
        body = response.content
        return body[:limit], len(body) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def bounded_request(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    deadline: float,
    limit: int,
    limiter: FairLimiter | None = None,
    key: str = "",
) -> Answer:
    """Send ``request`` and read at most ``limit`` bytes of the answer, all of it (a wait for a
    place under ``key`` in ``limiter`` included) within ``deadline`` seconds.

    Raises ``TimeoutError`` when the deadline passes and httpx's errors for transport failures.
    """
    place: AbstractAsyncContextManager[None] = (
        limiter.slot(key) if limiter is not None else nullcontext()
    )
    async with asyncio.timeout(deadline), place:
        response = await client.send(request, stream=True)
        try:
            body, cut = await _read_capped(response, limit)
        finally:
            await response.aclose()  # a cut body: the connection is dropped, not drained
    return Answer(response.status_code, response.headers, body, cut, limit)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The public CAs (certifi's bundle, as requests used), built once: every client shares it."""
    return ssl.create_default_context(cafile=certifi.where())


def tls_context(ca_pem: str | None = None, verify: bool = True) -> ssl.SSLContext | bool:
    """What httpx's ``verify`` gets: False when verification is off, else a context that trusts
    ``ca_pem`` (PEM text, kept in memory) or the public CAs."""
    if not verify:
        return False
    if ca_pem is None:
        return _default_context()
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError("the CA bundle is not valid PEM") from exc


def new_client(
    verify: ssl.SSLContext | bool = True,
    *,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient for bounded calls: no pool limit of its own (the callers' FairLimiter
    bounds concurrency; httpx's pool would queue every tenant behind one blackholed host), no
    redirects followed, no timeout of its own (the caller's deadline is the one clock)."""
    return httpx.AsyncClient(
        verify=_default_context() if verify is True else verify,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})},
        auth=auth,
        transport=transport,
        timeout=None,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in found:
        found.append(cause)
        cause = cause.__cause__ or cause.__context__
    return found


def tls_failure(exc: BaseException) -> BaseException | None:
    """The certificate verification error behind ``exc`` (httpx wraps the ssl error)."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            cause
        ):
            return cause
    return None


def transport_failure(exc: BaseException) -> str:
    """Why a call failed below HTTP, in words: the certificate problem, the operating system's
    reason (httpx's anyio backend says only "All connection attempts failed") or the error."""
    tls = tls_failure(exc)
    if tls is not None:
        return f"TLS certificate verification failed: {tls}"
    for cause in reversed(_chain(exc)):
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
    return str(exc) or type(exc).__name__
