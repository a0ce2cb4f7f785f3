"""What the processes sharing a state share per Clover host and merchant, through the store.

- Export slots: a lane first takes a slot of its own process (`ExportSlots`, fair between
  this process's merchants, waited for without polling), then one of the host's slots in
  the store, which counts the slots of every live process against one adaptive limit and
  hands them out round-robin across merchants. A process alone on the state tracks the
  same limit in both, so that the store never makes it wait. A dead process's slots end
  with its lease.
- The busy backoff and the adaptive limit: a busy 503 seen by one process holds every
  process back, and the shared limit drops to what that process's slots now allow.
- Refresh locks: one refresh per merchant at a time, whichever process does it.

A wait for the store is a loop of short naps on the clock: the store has no way to wake a
waiter in another process.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime

from harvester.clock import Clock, nap
from harvester.logs import get_logger
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import ProcessLease

MIN_POLL_S = 0.1
MAX_POLL_S = 1.0


class SharedSlots:
    """One host's export slots, shared by every process on the state."""

    def __init__(
        self,
        local: ExportSlots,
        lease: ProcessLease,
        host: str,
        clock: Clock,
        stop: asyncio.Event,
        poll_s: float,
        rng: random.Random,
    ) -> None:
        self.local = local
        self._lease = lease
        self._host = host
        self._clock = clock
        self._stop = stop
        self._poll_s = min(MAX_POLL_S, max(MIN_POLL_S, poll_s))
        self._rng = rng
        self.shared_limit = local.maximum  # as the store last said

    @property
    def maximum(self) -> int:
        return self.local.maximum

    def hold(self, merchant_id: str) -> AbstractAsyncContextManager[None]:
        """One of the host's slots, held until the block ends; hold this process's slot
        (`local.hold`) around it.

        If a stop is asked for while waiting, the block runs without a slot: the caller
        checks for the stop before using it.
        """
        return self._hold(merchant_id)

    @asynccontextmanager
    async def _hold(self, merchant_id: str) -> AsyncIterator[None]:
        slot_id = await self._take(merchant_id)
        try:
            yield
        finally:
            if slot_id is not None:
                await asyncio.shield(self._lease.store.release_slot(slot_id))

    async def busy(self, until: datetime, limit: int) -> None:
        """A busy 503: every process holds back until `until`; the shared limit drops to
        `limit`, what this process's slots allow now (`ExportSlots.busy`, told already)."""
        self.shared_limit = await self._lease.store.slot_busy(
            self._host, until, self.maximum, limit
        )

    async def went_through(self) -> None:
        """An export was created: the backoff ends; the shared limit may grow.

        The caller has told this process's slots already (`ExportSlots.went_through`)."""
        self.shared_limit = await self._lease.store.slot_went_through(self._host, self.maximum)

    async def _take(self, merchant_id: str) -> int | None:
        store = self._lease.store
        waiter: int | None = None
        granted = False
        announced = False
        try:
            while True:
                tried = await store.take_slot(
                    self._host, self._lease.owner.id, merchant_id, waiter, self.maximum
                )
                waiter = tried.waiter_id
                self.shared_limit = tried.limit
                if tried.slot_id is not None:
                    granted = True
                    return tried.slot_id
                if not announced:
                    announced = True
                    get_logger().debug("slot.shared_wait", limit=tried.limit, in_use=tried.in_use)
                left_s = (
                    (tried.busy_until - self._clock.now()).total_seconds()
                    if tried.busy_until is not None
                    else 0.0
                )
                # Held back by a busy backoff: until its end, as the gate does.
                pause_s = left_s if left_s > 0 else self._poll_s * self._rng.uniform(0.5, 1.5)
                if not await nap(self._clock, pause_s, self._stop):
                    return None
        finally:
            if waiter is not None and not granted:
                await asyncio.shield(store.leave_slot_queue(waiter))


class RefreshLocks:
    """One refresh per merchant at a time across the processes on the state."""

    def __init__(self, lease: ProcessLease, clock: Clock, poll_s: float) -> None:
        self._lease = lease
        self._clock = clock
        self._poll_s = min(MAX_POLL_S, max(MIN_POLL_S, poll_s))

    def hold(self, merchant_id: str) -> AbstractAsyncContextManager[None]:
        return self._hold(merchant_id)

    @asynccontextmanager
    async def _hold(self, merchant_id: str) -> AsyncIterator[None]:
        store = self._lease.store
        owner = self._lease.owner.id
        while (holder := await store.lock_token(merchant_id, owner)) is not None:
            get_logger().debug("token.refresh_wait", host=holder.host, pid=holder.pid)
            await self._clock.sleep(self._poll_s)
        try:
            yield
        finally:
            await asyncio.shield(store.unlock_token(merchant_id, owner))
