"""Concurrency shared fairly between keys (namespaces): one key's slow calls hold only its share.

A single pool for everyone (the eight threads all Prometheus queries once shared) lets one
tenant's slow dependency occupy every place: eight trickling queries and every other tenant's
analysis waits. :class:`FairLimiter` bounds the calls in flight in all (``capacity``: memory,
sockets) and per key (``per_key``), and when a place frees up the keys that wait take turns
(round robin), each key's own callers first come, first served. A key that is below its share
and finds a free place never waits, whatever the other keys do.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairLimiter:
    """At most ``capacity`` holders at once, at most ``per_key`` of them for one key."""

    def __init__(self, capacity: int, per_key: int) -> None:
        if capacity < 1 or not 1 <= per_key <= capacity:
            raise ValueError(f"need 1 <= per_key <= capacity, got {per_key} and {capacity}")
        self.capacity = capacity
        self.per_key = per_key
        self._held: dict[str, int] = {}
        self._total = 0
        # keys with waiters, in turn order; a key served goes to the back
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def held(self, key: str | None = None) -> int:
        """Places held, by ``key`` or in all."""
        return self._total if key is None else self._held.get(key, 0)

    def waiting(self, key: str) -> int:
        return len(self._waiting.get(key, ()))

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold a place for ``key`` while the block runs (waiting for one first if need be)."""
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    def _free_for(self, key: str) -> bool:
        return self._total < self.capacity and self._held.get(key, 0) < self.per_key

    def _take(self, key: str) -> None:
        self._held[key] = self._held.get(key, 0) + 1
        self._total += 1

    async def _acquire(self, key: str) -> None:
        if key not in self._waiting and self._free_for(key):
            self._take(key)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(key)  # granted, but the caller gave up before it could run
            else:
                self._forget(key, waiter)
            raise

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[key]

    def _release(self, key: str) -> None:
        self._held[key] -= 1
        if not self._held[key]:
            del self._held[key]
        self._total -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free places to waiting keys in turn, one per key per round."""
        granted = True
        while granted and self._total < self.capacity:
            granted = False
            for key in list(self._waiting):
                if self._total >= self.capacity:
                    return
                queue = self._waiting[key]
                while queue and queue[0].done():  # cancelled, not yet forgotten
                    queue.popleft()
                if queue and self._free_for(key):
                    self._take(key)
                    queue.popleft().set_result(None)
                    granted = True
                    self._waiting.move_to_end(key)
                if not queue:
                    del self._waiting[key]
