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
- Clover's app limits (`SharedLimits`): each process working on the host is one of its
  users and runs its request limiter with one share of every budget; an app-scope 429 one
  process got pauses them all.

A waiter for the store is woken by the host's signals (`signals.HostSignals`: PostgreSQL's
NOTIFY, SQLite's poll of the host's version while anyone waits) as soon as another process
changes the host; a nap on the clock, as long as the waits used to be, stays as a backstop.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta

from harvester.clock import Clock, wait_first
from harvester.clover.ratelimit import RequestLimiter
from harvester.errors import HarvesterError
from harvester.logs import get_logger
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import ClaimLost, ProcessLease
from harvester.state.records import HostView

MIN_POLL_S = 0.1
MAX_POLL_S = 1.0
# SQLite, alone on a host: how often a process looks whether another one has joined it (its
# share halves then): one read of a row, four times a second. Sharing the host it polls
# every 20 ms (a pause must reach it at once); on PostgreSQL it is told.
ALONE_CHECK_S = 0.25
# A process whose limiter has had nothing in flight or waiting this long leaves the host's
# users: its share goes to the processes that have requests to make. It joins again with
# its next request.
IDLE_S = 2.0
# A process that joins a host others use starts nothing for this long: they learn of it
# within ALONE_CHECK_S (sooner if not alone) and take their smaller shares, and what they
# sent under their larger ones counts at the server for a second more (Clover's window).
JOIN_HOLD_S = ALONE_CHECK_S + 1.0
# A process that leaves a host (it exits, or has had nothing to send for IDLE_S) may have
# sent its last requests just before, under its share, and they count at the server for a
# second more (Clover's window): the others take its share only once that has passed.
GROW_AFTER_S = 1.0


class HeldSlot:
    """A host's slot in the store, as the lane holding it sees it."""

    __slots__ = ("id",)

    def __init__(self, slot_id: int | None) -> None:
        self.id = slot_id  # None: none held (a stop came first), or given back already

    def given_back(self) -> int | None:
        """The slot's id, for the store operation that gives it back with the export's DONE
        (`StateStore.export_done_held`): the block's end then has nothing left to give back.
        Call once that operation is asked for: asked, it lands even if its caller is
        cancelled."""
        slot_id, self.id = self.id, None
        return slot_id


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
        # As the store last said: the shared limit at its maximum and no busy backoff
        # running, so that an export going through has nothing to change (see went_through).
        self._settled = False

    @property
    def maximum(self) -> int:
        return self.local.maximum

    def hold(
        self, merchant_id: str, chunk_id: int | None = None
    ) -> AbstractAsyncContextManager[HeldSlot]:
        """One of the host's slots, held until the block ends (or given back sooner with
        the export's DONE, `HeldSlot.given_back`); hold this process's slot (`local.hold`)
        around it. With `chunk_id`, the chunk's claim is confirmed as the slot is granted
        (`ProcessLease.confirm`, in the same store operation): ClaimLost, the slot given
        back, if this process no longer holds it.

        If a stop is asked for while waiting, the block runs without a slot: the caller
        checks for the stop before using it.
        """
        return self._hold(merchant_id, chunk_id)

    @asynccontextmanager
    async def _hold(self, merchant_id: str, chunk_id: int | None) -> AsyncIterator[HeldSlot]:
        slot_id, held = await self._take(merchant_id, chunk_id)
        slot = HeldSlot(slot_id)
        try:
            if not held:
                raise ClaimLost(f"chunk {chunk_id} was taken over by another process")
            yield slot
        finally:
            if slot.id is not None:
                await asyncio.shield(self._lease.store.release_slot(slot.id))

    async def busy(self, until: datetime, limit: int) -> None:
        """A busy 503: every process holds back until `until`; the shared limit drops to
        `limit`, what this process's slots allow now (`ExportSlots.busy`, told already)."""
        self._settled = False
        self.shared_limit = await self._lease.store.slot_busy(
            self._host, until, self.maximum, limit
        )

    async def went_through(self) -> None:
        """An export was created: the backoff ends; the shared limit may grow.

        The caller has told this process's slots already (`ExportSlots.went_through`).
        Nothing is written while the host was settled when its slot was granted (the limit
        at its maximum, no backoff): a process alone pays no store operation per export
        for it. Another process's busy answer since stays in force until the next grant
        shows it, or one of this process's exports goes through after that.
        """
        if self._settled:
            return
        self.shared_limit = await self._lease.store.slot_went_through(self._host, self.maximum)
        self._settled = self.shared_limit >= self.maximum

    async def _take(self, merchant_id: str, chunk_id: int | None) -> tuple[int | None, bool]:
        """The slot (None if stopped first), and whether the chunk's claim is held."""
        store = self._lease.store
        signals = store.host_signals()
        waiter: int | None = None
        granted = False
        announced = False
        try:
            while True:
                # Before the read: a slot given back after it wakes the wait below.
                mark = await signals.mark(self._host)
                tried = await store.take_slot(
                    self._host, self._lease.owner.id, merchant_id, waiter, self.maximum, chunk_id
                )
                waiter = tried.waiter_id
                self.shared_limit = tried.limit
                if tried.slot_id is not None:
                    granted = True
                    self._settled = tried.limit >= self.maximum and (
                        tried.busy_until is None or tried.busy_until <= self._clock.now()
                    )
                    return tried.slot_id, tried.claim_held
                if not announced:
                    announced = True
                    get_logger().debug("slot.shared_wait", limit=tried.limit, in_use=tried.in_use)
                left_s = (
                    (tried.busy_until - self._clock.now()).total_seconds()
                    if tried.busy_until is not None
                    else 0.0
                )
                # Held back by a busy backoff: until its end, as the gate does, unless another
                # process ends it first. Else until a slot is given back anywhere.
                pause_s = left_s if left_s > 0 else self._poll_s * self._rng.uniform(0.5, 1.5)
                if self._stop.is_set():
                    return None, True
                await wait_first(
                    self._clock.sleep(pause_s),
                    self._stop.wait(),
                    signals.wait(self._host, mark),
                )
                if self._stop.is_set():
                    return None, True
        finally:
            if waiter is not None and not granted:
                await asyncio.shield(store.leave_slot_queue(waiter))


class SharedLimits:
    """Clover's app limits for every process on one host, through the state.

    While this process has requests to make on the host (its limiter is busy, or was less
    than `idle_s` ago), it is one of the host's users, and its limiter runs with one share
    of each budget: as many shares as users whose lease runs, looked at again whenever the
    host changes (a process joins, leaves, pauses) and at each heartbeat. A process that
    only waits (for chunks held elsewhere, say) takes no share from those that work.
    Its limiter starts no request while it is not a user: the first one waits for the join,
    and where other processes use the host, for `join_hold_s` more (JOIN_HOLD_S). Its share
    shrinks as soon as another process joins, and grows `grow_after_s` after one has left
    (GROW_AFTER_S): at no instant do the shares in use, and what was sent under them in the
    server's window, add up to more than the whole.
    An app-scope 429 this limiter is told of (`RequestLimiter.on_app_pause`) is written to
    the host's row; one another process wrote is applied here (`hold_app`), so that no
    process starts a request inside it once it has learnt of it (at once on PostgreSQL;
    within a poll on SQLite, which polls only while another process shares the host).
    """

    def __init__(
        self,
        limiter: RequestLimiter,
        lease: ProcessLease,
        host: str,
        maximum: int,
        app_concurrent: int,
        clock: Clock,
        timer: Clock,
        idle_s: float = IDLE_S,
        join_hold_s: float = JOIN_HOLD_S,
        grow_after_s: float = GROW_AFTER_S,
    ) -> None:
        """`maximum`: the host's export limit (for a new host row); `clock` the limiter's,
        `timer` the heartbeat's (real time, as the lease's)."""
        self._limiter = limiter
        self._lease = lease
        self._host = host
        self._maximum = maximum
        self._app_concurrent = app_concurrent
        self._clock = clock
        self._timer = timer
        self._idle_s = idle_s
        self._join_hold_s = join_hold_s
        self._grow_after_s = grow_after_s
        # Fewer users seen: how many, and when (the limiter's monotonic clock) the share
        # grows to match; None while the share matches the users.
        self._growing: tuple[int, float] | None = None
        self._pause_until: datetime | None = None  # asked for here, not written yet
        self._paused_here = asyncio.Event()
        self._joined = False
        self._mark = 0
        self._view = HostView(0, 1, None)

    async def run(self, done: asyncio.Event) -> None:
        """Share the host's limits until `done` is set; then give this share back."""
        limiter = self._limiter
        busy = asyncio.Event()
        limiter.on_app_pause = self._pause_asked
        limiter.on_busy = busy.set
        limiter.hold_until(math.inf)  # until joined
        log = get_logger()
        try:
            while not done.is_set():
                if not self._joined and not limiter.busy and not self._paused_here.is_set():
                    busy.clear()
                    await wait_first(done.wait(), busy.wait(), self._paused_here.wait())
                    continue
                try:
                    await self._look(done)
                except HarvesterError as exc:  # a busy store now and then must not end the run
                    log.warning("host.limits_not_read", host=self._host, error=str(exc))
                    # Requests go on with the share this process last had, as they would
                    # if it had joined.
                    limiter.hold_until(-math.inf)
                    await wait_first(done.wait(), self._timer.sleep(self._idle_s))
        finally:
            limiter.hold_until(-math.inf)
            limiter.on_app_pause = None
            limiter.on_busy = None
            if self._joined:
                try:
                    await asyncio.shield(self._lease.store.leave_host(self._host, self._owner))
                except HarvesterError as exc:  # the lease's end takes the share back anyway
                    log.warning("host.not_left", host=self._host, error=str(exc))

    @property
    def _owner(self) -> str:
        return self._lease.owner.id

    async def _look(self, done: asyncio.Event) -> None:
        """Join if need be, take this process's share, wait for a change, read it."""
        store = self._lease.store
        signals = store.host_signals()
        joining = not self._joined
        if joining:
            self._mark = await signals.mark(self._host)
            self._view = await store.join_host(self._host, self._owner, self._maximum)
            self._joined = True
        view = self._view
        self._apply(view)
        if joining:
            # Its share, now known, is used at once if it is alone; else once the others
            # have taken theirs and what they sent before counts no more (JOIN_HOLD_S).
            self._limiter.hold_until(
                self._clock.monotonic() + self._join_hold_s if view.users > 1 else -math.inf
            )
        waits = [
            done.wait(),
            self._paused_here.wait(),
            self._timer.sleep(min(self._beat_s(view), self._idle_s)),
        ]
        if self._growing is not None:
            waits.append(self._clock.sleep(self._growing[1] - self._clock.monotonic()))
        if not signals.polled or view.users > 1:
            waits.append(signals.wait(self._host, self._mark))
        await wait_first(*waits)
        self._mark = await signals.mark(self._host)
        await self._write_pause()
        if self._limiter.idle_for >= self._idle_s:
            # Nothing to send for a while: the share goes to those that have.
            self._joined = False
            self._growing = None  # begun again at the join: others may leave meanwhile
            self._limiter.hold_until(math.inf)  # until joined again
            await store.leave_host(self._host, self._owner)
            return
        self._view = await store.host_view(self._host)

    def _beat_s(self, view: HostView) -> float:
        beat_s = self._lease.lease_s / 3
        signals = self._lease.store.host_signals()
        return min(beat_s, ALONE_CHECK_S) if signals.polled and view.users <= 1 else beat_s

    def _pause_asked(self, seconds: float) -> None:
        until = self._clock.now() + timedelta(seconds=seconds)
        if self._pause_until is None or until > self._pause_until:
            self._pause_until = until
        self._paused_here.set()

    async def _write_pause(self) -> None:
        self._paused_here.clear()
        until, self._pause_until = self._pause_until, None
        if until is not None:
            await self._lease.store.pause_app(self._host, until, self._maximum)

    def _apply(self, view: HostView) -> None:
        limiter = self._limiter
        users = self._shares_for(max(1, view.users))
        if users != limiter.shares:
            limiter.share(users)
            get_logger().info(
                "host.shared", host=self._host, users=users, app_rate=limiter.app_rate
            )
            if users > self._app_concurrent:
                get_logger().warning(
                    "host.shares_exceed_concurrency",
                    host=self._host,
                    users=users,
                    app_concurrent=self._app_concurrent,
                )
        if view.app_paused_until is not None:
            left_s = (view.app_paused_until - self._clock.now()).total_seconds()
            if left_s > limiter.app_paused_for + 0.001:  # not this limiter's own pause
                limiter.hold_app(left_s)

    def _shares_for(self, users: int) -> int:
        """The shares to run with now that the host has `users` users: as many at once if
        that is no fewer than now, else once `grow_after_s` has passed since fewer were
        first seen (a further leave starts that wait again)."""
        if users >= self._limiter.shares:
            self._growing = None
            return users
        now = self._clock.monotonic()
        if self._growing is None or self._growing[0] != users:
            self._growing = (users, now + self._grow_after_s)
        if now < self._growing[1]:
            return self._limiter.shares
        self._growing = None
        return users


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
