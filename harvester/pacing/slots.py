"""Export slots per Clover host: shared fairly between merchants, sized by what the server takes.

Clover runs only a few exports at once per host and answers 503 past that; how many is not
published. A slot is taken before POSTing an export and held until the export ends.

The limit adapts. A busy 503 says how many exports the server runs: as many as this host has
running when the answer comes (its own, and orphans: creates whose answer was lost). The
first busy answer of a burst sets the limit to that number (never below 1, never up); the
others of the burst, answers to POSTs already on their way, change nothing. A run of as
many exports as the limit that went through without a busy answer raises it by one, up to
the configured maximum: the probe for room that may have come free.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
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
        self._in_burst = False  # a busy answer came, and no create went through since
        self._running: set[int] = set()  # grant orders of held slots whose export runs
        self._orphans = 0  # slots held for exports that may exist without a known id
        self._orphaned_held: set[int] = set()  # orphan slots their lane has not left yet
        self._orphaned_left: set[int] = set()  # orphan slots their lane has left
        self._in_use = 0
        self._max_in_use = 0
        self._grants = itertools.count(1)
        self._tickets = itertools.count()
        self._last_served: dict[str, int] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}
        # Merchants with waiters by rank, smallest first: each has an entry no higher than
        # its rank. Ranks only grow (served later, a later first waiter), so an entry that
        # comes up stale is put back at the merchant's rank now, or dropped if it has no
        # waiter left. A scan of every merchant per grant cost milliseconds at 10,000.
        self._ranked: list[tuple[int, int, str]] = []

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
    def running(self) -> int:
        """Exports this host runs as far as we know: created ones still held, and orphans."""
        return len(self._running) + self._orphans

    @property
    def orphans(self) -> int:
        """Slots held now for creates whose answer was lost."""
        return self._orphans

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return sum(len(queue) for queue in self._waiters.values())

    def hold(self, merchant_id: str) -> AbstractAsyncContextManager[Slot]:
        """Wait for a slot for `merchant_id` and hold it until exit, however the block ends."""
        return self._hold(merchant_id)

    def busy(self) -> None:
        """A busy 503 came: the first of a burst sets the limit to the exports running now."""
        self._run = 0
        if self._in_burst:
            return
        self._in_burst = True
        self._limit = min(self._limit, max(1, self.running))

    def went_through(self, slot: Slot) -> None:
        """The export of `slot` was created: it runs until the slot goes back. After `limit`
        in a row without a busy answer, raise the limit."""
        self.runs(slot)
        self._in_burst = False
        self._run += 1
        if self._run >= self._limit:
            self._run = 0
            self._limit = min(self._maximum, self._limit + 1)
            self._grant()

    def runs(self, slot: Slot) -> None:
        """The export of `slot` runs (re-attached to, or just created)."""
        self._running.add(slot.order)

    def hold_orphan(self, slot: Slot) -> Callable[[], None]:
        """The create `slot` was held for lost its answer: the export may exist. The slot
        stays taken after its holder leaves it, until the returned function is called."""
        self._orphans += 1
        self._running.discard(slot.order)
        self._orphaned_held.add(slot.order)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._orphans -= 1
            if slot.order in self._orphaned_held:
                self._orphaned_held.discard(slot.order)  # its holder gives it back on leaving
            else:
                self._orphaned_left.discard(slot.order)
                self._release()

        return release

    @asynccontextmanager
    async def _hold(self, merchant_id: str) -> AsyncIterator[Slot]:
        slot = await self._acquire(merchant_id)
        try:
            yield slot
        finally:
            self._running.discard(slot.order)
            if slot.order in self._orphaned_held:
                self._orphaned_held.discard(slot.order)
                self._orphaned_left.add(slot.order)  # now the orphan's until it is released
            else:
                self._release()

    async def _acquire(self, merchant_id: str) -> Slot:
        waiter = _Waiter(next(self._tickets), asyncio.get_running_loop().create_future())
        queue = self._waiters.setdefault(merchant_id, deque())
        queue.append(waiter)
        if len(queue) == 1:
            heapq.heappush(self._ranked, (*self._rank(merchant_id), merchant_id))
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
            merchant_id = self._next_merchant()
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

    def _next_merchant(self) -> str:
        """The merchant with waiters whose rank is smallest (there is one)."""
        while True:
            last_served, ticket, merchant_id = self._ranked[0]
            if merchant_id in self._waiters:
                now = self._rank(merchant_id)
                if now == (last_served, ticket):
                    return merchant_id
                heapq.heapreplace(self._ranked, (*now, merchant_id))  # ranks only grow
            else:
                heapq.heappop(self._ranked)

    def _rank(self, merchant_id: str) -> tuple[int, int]:
        """Least recently served first; among the never served, the longest waiting first."""
        return (self._last_served.get(merchant_id, 0), self._waiters[merchant_id][0].ticket)
