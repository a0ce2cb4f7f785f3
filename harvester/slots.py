"""Export slots per Clover host: shared fairly between merchants, sized by what the server takes.

Clover runs only a few exports at once per host and answers 503 past that; how many is not
published. A slot is taken before POSTing an export and held until the export ends. The limit
adapts like TCP's congestion window (AIMD): a busy 503 halves it, and a run of as many exports
as the limit that went through without one raises it by one, up to the configured maximum.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """A granted export slot: whose it is, and the how-manieth grant on this host it was."""

    merchant_id: str
    order: int


@dataclass(slots=True, eq=False)
class _Waiter:
    ticket: int  # arrival order, to rank merchants that were never served
    granted: asyncio.Future[Slot]


class ExportSlots:
    """The export slots of one Clover host.

    Slots go round-robin across merchants: among merchants with a waiter, the one served least
    recently goes first (so a merchant asking again queues behind those already waiting), and
    one merchant's waiters go in arrival order. A long backfill thus never starves the others.
    """

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be >= 1, got {maximum}")
        self._maximum = maximum
        self._limit = maximum
        self._run = 0  # exports that went through since the last change of the limit
        self._in_use = 0
        self._max_in_use = 0
        self._grants = itertools.count(1)
        self._tickets = itertools.count()
        self._last_served: dict[str, int] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}

    @property
    def limit(self) -> int:
        """How many slots may be in use now."""
        return self._limit

    @property
    def maximum(self) -> int:
        """The configured ceiling of the limit."""
        return self._maximum

    @property
    def in_use(self) -> int:
        """Slots held now; above `limit` for a while after the limit drops."""
        return self._in_use

    @property
    def max_in_use(self) -> int:
        """The most slots ever held at once."""
        return self._max_in_use

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return sum(len(queue) for queue in self._waiters.values())

    def hold(self, merchant_id: str) -> AbstractAsyncContextManager[Slot]:
        """Wait for a slot for `merchant_id` and hold it until exit, however the block ends."""
        return self._hold(merchant_id)

    def busy(self) -> None:
        """A busy 503 was seen: halve the limit (never below 1) and start the run over."""
        self._limit = max(1, self._limit // 2)
        self._run = 0

    def went_through(self) -> None:
        """An export was created without a busy 503: after `limit` in a row, raise the limit."""
        self._run += 1
        if self._run >= self._limit:
            self._run = 0
            self._limit = min(self._maximum, self._limit + 1)
            self._grant()

    @asynccontextmanager
    async def _hold(self, merchant_id: str) -> AsyncIterator[Slot]:
        slot = await self._acquire(merchant_id)
        try:
            yield slot
        finally:
            self._release()

    async def _acquire(self, merchant_id: str) -> Slot:
        waiter = _Waiter(next(self._tickets), asyncio.get_running_loop().create_future())
        self._waiters.setdefault(merchant_id, deque()).append(waiter)
        self._grant()
        try:
            return await waiter.granted
        except BaseException:
            if waiter.granted.done() and not waiter.granted.cancelled():
                # Cancelled just as the slot was handed over: hand it on.
                self._release()
            else:
                self._forget(merchant_id, waiter)
            raise

    def _release(self) -> None:
        self._in_use -= 1
        self._grant()

    def _forget(self, merchant_id: str, waiter: _Waiter) -> None:
        queue = self._waiters.get(merchant_id)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._waiters[merchant_id]

    def _grant(self) -> None:
        while self._waiters and self._in_use < self._limit:
            merchant_id = min(self._waiters, key=self._rank)
            waiter = self._waiters[merchant_id][0]
            self._forget(merchant_id, waiter)
            if waiter.granted.cancelled():
                # Its task was cancelled but has not run yet to withdraw it.
                continue
            order = next(self._grants)
            self._last_served[merchant_id] = order
            self._in_use += 1
            self._max_in_use = max(self._max_in_use, self._in_use)
            waiter.granted.set_result(Slot(merchant_id, order))

    def _rank(self, merchant_id: str) -> tuple[int, int]:
        """Least recently served first; among the never served, the longest waiting first."""
        return (self._last_served.get(merchant_id, 0), self._waiters[merchant_id][0].ticket)
