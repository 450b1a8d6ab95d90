"""Hostile HTTP servers on 127.0.0.1 for the outbound-call tests (never any other address).

* :func:`serve`: an aiohttp app on a free port (any method), counting hits per path;
* :func:`trickle`: answers 200 at once, then one byte every ``every`` seconds until released;
* :func:`endless`: answers 200 and streams ``total`` bytes (chunked, no Content-Length),
  recording how many it managed to send before the client hung up;
* :func:`blackhole`: a listening socket that never accepts: connections complete in the
  kernel's backlog and then nothing, ever, is said.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class LocalServer:
    url: str
    hits: dict[str, int]


async def serve(
    routes: dict[str, Handler], ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, LocalServer]:
    hits: dict[str, int] = {}

    def counted(path: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            hits[path] = hits.get(path, 0) + 1
            return await handler(request)

        return wrapped

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, counted(path, handler))
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if ssl_context else "http"
    return runner, LocalServer(url=f"{scheme}://{host}:{port}", hits=hits)


def trickle(release: asyncio.Event, every: float = 0.5) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while not release.is_set():  # each read is quick, the whole never ends
            await response.write(b" ")
            await asyncio.sleep(every)
        return response

    return handler


@dataclass
class Endless:
    """An answer of ``total`` bytes; ``sent`` is how much of it went out."""

    total: int
    sent: int = 0
    chunk: bytes = field(default=b"x" * 65536, repr=False)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while self.sent < self.total:
                await response.write(self.chunk)
                self.sent += len(self.chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what a capped reader should do
        return response


def endless(total: int) -> Endless:
    return Endless(total)


@contextmanager
def blackhole() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a socket that listens and never accepts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (polled), failing with TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
